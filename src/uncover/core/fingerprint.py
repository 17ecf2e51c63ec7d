"""Weights fingerprint: a cheap hash of a module's exact parameter bits, usable from every layer.

The same function as :func:`uncover.ops.provenance.weights_fingerprint` (which records it in
provenance); it lives here too so that lower layers (``scale``'s manifests and Ray workers, which
check that each worker loaded the driver's weights) can compute it. A hash over every parameter's
name, shape, dtype and the integer sum of its raw bits (integer addition does not depend on
reduction order, so the fingerprint is the same on every machine and thread count), plus a strided
sample of the values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@torch.no_grad()
def weights_fingerprint(module: torch.nn.Module,
                        resolve: Callable[[str], torch.Tensor | None] | None = None) -> str:
    """A 16-hex-digit hash of every parameter and buffer's exact bits (cheap: one pass of integer sums).

    A tensor on the ``meta`` device (an offloaded weight's stand-in) is replaced by ``resolve(name)``
    when given (``None``: skipped), so that a change to an offloaded weight changes the fingerprint.

    >>> from uncover.core.fingerprint import weights_fingerprint
    >>> lin = torch.nn.Linear(4, 4)
    >>> a = weights_fingerprint(lin); _ = lin.weight.data[0, 0].add_(1e-6)
    >>> a == weights_fingerprint(lin)
    False
    """
    h = hashlib.blake2b(digest_size=8)
    seen: set[int] = set()
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, t in tensors:
        if id(t) in seen:
            continue
        seen.add(id(t))
        if t.device.type == "meta":
            t = resolve(name) if resolve is not None else None
            if t is None or t.device.type == "meta":
                continue
        flat = t.detach().reshape(-1)
        bits = flat.contiguous().view(_INT_VIEW[flat.element_size()]) if flat.is_floating_point() else flat
        total = int(bits.sum(dtype=torch.int64)) if bits.numel() else 0
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{total}|".encode())
        h.update(sample)
    return h.hexdigest()
