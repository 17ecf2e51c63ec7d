"""Provenance: where a result came from (operation, config, model, versions, machine, time).

The model's identity includes a weights fingerprint that changes with any weight edit: a
hash over every parameter's name, shape, dtype and the integer sum of its raw bits
(integer addition does not depend on reduction order, so the fingerprint is the same on
every machine and thread count), plus a strided sample of the values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel
    from uncover.ops.registry import Operation

_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@torch.no_grad()
def weights_fingerprint(module: torch.nn.Module) -> str:
    """A 16-hex-digit hash of every parameter and buffer's exact bits (cheap: one pass of integer sums).

    >>> from uncover.ops.provenance import weights_fingerprint
    >>> lin = torch.nn.Linear(4, 4)
    >>> a = weights_fingerprint(lin); _ = lin.weight.data[0, 0].add_(1e-6)
    >>> a == weights_fingerprint(lin)
    False
    """
    h = hashlib.blake2b(digest_size=8)
    seen: set[int] = set()
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, t in tensors:
        if id(t) in seen or t.device.type == "meta":
            continue
        seen.add(id(t))
        flat = t.detach().reshape(-1)
        bits = flat.contiguous().view(_INT_VIEW[flat.element_size()]) if flat.is_floating_point() else flat
        total = int(bits.sum(dtype=torch.int64)) if bits.numel() else 0
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{total}|".encode())
        h.update(sample)
    return h.hexdigest()


def model_identity(model: HookedModel) -> dict[str, Any]:
    """Name, source (what ``uncover.load`` was given), family, size and weights fingerprint."""
    c = model.cfg
    return {"name": model.name, "source": getattr(model, "source", model.name), "family": c.family,
            "n_layers": c.n_layers, "d_model": c.d_model, "fingerprint": weights_fingerprint(model.model)}


def versions() -> dict[str, str]:
    """Versions of uncover, torch, transformers and Python."""
    import transformers

    import uncover

    return {"uncover": uncover.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


@dataclass
class Provenance:
    """Where a result came from.

    Attributes:
        operation: the operation's name (``uncover list``).
        config: the config's fields (``Config.to_dict()``).
        model: :func:`model_identity` of the model it ran on, ``None`` for model-free operations.
        versions: :func:`versions` at run time.
        device, dtype: where and in which precision the model ran.
        seed: the seed set before the run (``None``: none).
        started: ISO-8601 UTC start time; seconds: wall time of the run.
        deterministic: whether a rerun is expected to reproduce the result.
        host: the machine's platform string.
    """

    operation: str
    config: dict[str, Any]
    model: dict[str, Any] | None
    versions: dict[str, str]
    device: str
    dtype: str
    seed: int | None
    started: str
    seconds: float
    deterministic: bool = True
    host: str = field(default_factory=platform.platform)

    @classmethod
    def record(cls, op: Operation, config: Any, model: HookedModel | None, seed: int | None, started: float,
               seconds: float) -> Provenance:
        when = dt.datetime.fromtimestamp(started, tz=dt.UTC).isoformat(timespec="seconds")
        return cls(op.name, config.to_dict(), model_identity(model) if model is not None else None, versions(),
                   str(model.device) if model is not None else "cpu",
                   str(model.dtype).removeprefix("torch.") if model is not None else "float32",
                   seed, when, round(seconds, 4), op.deterministic)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        return cls(**data)

    def lines(self) -> list[str]:
        """Human-readable lines for reports."""
        m = self.model
        model = f"{m['name']} ({m['family']}, weights {m['fingerprint']})" if m else "none (trained from scratch)"
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        vers = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        return [f"operation: {self.operation}", f"config: {cfg}", f"model: {model}",
                f"device: {self.device}, dtype: {self.dtype}, seed: {self.seed}",
                f"started {self.started}, {self.seconds:.2f} s", f"versions: {vers}"]
