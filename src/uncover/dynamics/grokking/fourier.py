"""Fourier analysis of the modular-addition circuit (Nanda et al. 2023, sections 4-5).

The model computes ``a + b mod p`` with a few "key frequencies" ``w_k = 2πk/p``: it embeds
tokens as ``cos(w_k a), sin(w_k a)``, its neurons read ``cos(w_k (a+b))`` and the logits are
``Σ_k cos(w_k (a+b-c))``. This module owns the Fourier basis over the token index, the norm of
each frequency in the embedding and in the neuron-to-logit map, the neurons' frequencies,
the key frequencies, the Gini sparsity measure and the restricted / excluded projections of the
logits (keep only the key frequencies of ``a+b``; remove them).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from uncover.core.errors import UncoverError
from uncover.dynamics.grokking.config import GrokConfig

FOURIER_OPS = ("+", "-")


def fourier_basis(p: int) -> tuple[torch.Tensor, list[str]]:
    """Orthonormal Fourier basis over ``0..p-1`` (``p`` odd): ``[p, p]`` rows and their names.

    Row 0 is the constant, rows ``2k-1, 2k`` are ``cos(2πkx/p)``, ``sin(2πkx/p)``.

    >>> B, names = fourier_basis(5)
    >>> names
    ['const', 'cos 1', 'sin 1', 'cos 2', 'sin 2']
    >>> torch.allclose(B @ B.T, torch.eye(5, dtype=B.dtype), atol=1e-12)
    True
    """
    if p % 2 == 0:
        raise UncoverError(f"the Fourier basis here needs an odd p, not {p}")
    x = torch.arange(p, dtype=torch.float64)
    rows, names = [torch.ones(p, dtype=torch.float64)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        names += [f"cos {k}", f"sin {k}"]
    b = torch.stack(rows)
    return b / b.norm(dim=1, keepdim=True), names


def freq_norms(coeffs: torch.Tensor) -> torch.Tensor:
    """Norm per frequency ``[(p+1)/2]`` (index 0 = constant) of Fourier coefficients ``[p, ...]``.

    >>> freq_norms(torch.tensor([[3.0], [3.0], [4.0]])).tolist()
    [3.0, 5.0]
    """
    sq = coeffs.reshape(coeffs.shape[0], -1).double().pow(2).sum(1)
    per = torch.cat([sq[:1], sq[1::2] + sq[2::2]])
    return per.sqrt()


def gini(x: torch.Tensor) -> float:
    """Gini coefficient of non-negative values (0 = all equal, → 1 = one value holds everything).

    >>> gini(torch.tensor([1.0, 1.0, 1.0, 1.0])), gini(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    (0.0, 0.75)
    """
    v = x.flatten().double().abs().sort().values
    n, total = v.numel(), float(v.sum())
    if total == 0:
        return 0.0
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * i - n - 1) * v).sum() / (n * total))


def _check(cfg: GrokConfig) -> None:
    if cfg.op not in FOURIER_OPS:
        raise UncoverError(f"Fourier progress measures need op in {', '.join(FOURIER_OPS)}, not {cfg.op!r} "
                           "(× and ÷ are additions of discrete logarithms: not implemented)")


def embed_freq_norms(model: Any, cfg: GrokConfig) -> torch.Tensor:
    """Norm of each frequency in the number-token embedding ``W_E[:p]``: ``[(p+1)/2]``."""
    basis, _ = fourier_basis(cfg.p)
    w_e = model.transformer.wte.weight.detach()[: cfg.p].double()  # [p, d_model]
    return freq_norms(basis @ w_e)


def embed_gini(model: Any, cfg: GrokConfig) -> float:
    """Gini of the embedding's per-frequency norms (constant excluded); NaN for × and ÷."""
    if cfg.op not in FOURIER_OPS:
        return float("nan")
    return gini(embed_freq_norms(model, cfg)[1:])


def logit_map_gini(model: Any, cfg: GrokConfig) -> float:
    """Gini of the per-frequency norms of the neuron-to-logit map ``W_out @ W_U[:, :p]`` over outputs."""
    _check(cfg)
    basis, _ = fourier_basis(cfg.p)
    w_l = model.transformer.h[0].mlp.c_proj.weight.detach().double() @ model.lm_head.weight.detach()[: cfg.p].double().T
    return gini(freq_norms(basis @ w_l.T)[1:])  # [p (output freq), d_mlp]


def neuron_frequencies(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each neuron's dominant frequency and the fraction of its variance that frequency explains.

    ``acts`` ``[p, p, d_mlp]`` are activations over the ``(a, b)`` grid. A frequency ``k`` owns the
    2-D Fourier terms whose indices are in ``{cos k, sin k}`` on one axis and ``{const, cos k, sin k}``
    on the other. Returns ``(freq [d_mlp] (1..(p-1)/2), fraction [d_mlp])``.

    >>> p = 7; a = torch.arange(p).double()
    >>> acts = torch.cos(2 * math.pi * 3 * (a[:, None] + a[None, :]) / p)[..., None]
    >>> f, fve = neuron_frequencies(acts)
    >>> int(f[0]), round(float(fve[0]), 6)
    (3, 1.0)
    """
    p = acts.shape[0]
    basis, _ = fourier_basis(p)
    c = torch.einsum("ia,abn,jb->ijn", basis, acts.double(), basis).pow(2)  # [p, p, d_mlp]
    c[0, 0] = 0.0
    total = c.sum((0, 1)).clamp_min(1e-30)
    per = []
    for k in range(1, (p - 1) // 2 + 1):
        idx = [2 * k - 1, 2 * k]
        own = c[idx][:, [0, *idx]].sum((0, 1)) + c[0, idx].sum(0)
        per.append(own)
    frac = torch.stack(per) / total  # [n_freq, d_mlp]
    best = frac.max(0)
    return best.indices + 1, best.values


@torch.no_grad()
def grid_run(model: Any, cfg: GrokConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer logits ``[p*p, p]`` and last-position neuron activations ``[p*p, d_mlp]`` on every pair.

    Rows are in ``(a, b)`` order (``a * p + b``).
    """
    from uncover.dynamics.grokking.model import hooked

    p = cfg.p
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    tokens = torch.stack([a, b, torch.full_like(a, p)], 1)
    logits, cache = hooked(model, cfg).run_with_cache(tokens, ["blocks.0.mlp.hook_post"])
    return logits[:, -1, :p], cache["blocks.0.mlp.hook_post"][:, -1]


def key_frequencies(model: Any, cfg: GrokConfig, min_fve: float = 0.5, min_share: float = 0.02) -> list[int]:
    """Frequencies that dominate (``≥ min_fve`` of the variance) at least ``min_share`` of the live neurons.

    Falls back to the embedding's strongest frequencies (norm ≥ half the largest) when no
    neuron qualifies (an ungrokked model).
    """
    _check(cfg)
    _, acts = grid_run(model, cfg)
    acts = acts.view(cfg.p, cfg.p, -1)
    live = acts.flatten(0, 1).var(0) > 1e-8
    freq, fve = neuron_frequencies(acts[..., live])
    good = freq[fve >= min_fve]
    counts = torch.bincount(good, minlength=(cfg.p + 1) // 2)
    need = max(1, math.ceil(min_share * int(live.sum())))
    keys = [k for k in range(1, len(counts)) if counts[k] >= need]
    if not keys:
        norms = embed_freq_norms(model, cfg)[1:]
        keys = [k + 1 for k in range(len(norms)) if norms[k] >= 0.5 * norms.max()]
    return keys


def key_directions(p: int, freqs: list[int], op: str = "+") -> torch.Tensor:
    """Orthonormal directions ``[p*p, 2 * len(freqs)]`` over the ``(a, b)`` grid: ``cos, sin(w_k (a ± b))``.

    >>> d = key_directions(7, [1, 3])
    >>> torch.allclose(d.T @ d, torch.eye(4, dtype=d.dtype), atol=1e-12)
    True
    """
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    s = a + b if op == "+" else a - b
    cols = []
    for k in freqs:
        cols += [torch.cos(2 * math.pi * k * s / p), torch.sin(2 * math.pi * k * s / p)]
    if not cols:
        return torch.zeros(p * p, 0, dtype=torch.float64)
    d = torch.stack(cols, 1)
    return d / d.norm(dim=0, keepdim=True)


def restricted_logits(logits: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Logits ``[p*p, p]`` keeping only their mean over pairs and the key-frequency components.

    ``restricted + excluded == logits + logits.mean(0)`` (the mean is kept by both).
    """
    lg = logits.double()
    return lg.mean(0, keepdim=True) + directions @ (directions.T @ lg)


def excluded_logits(logits: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Logits ``[p*p, p]`` with the key-frequency components of ``a ± b`` removed."""
    lg = logits.double()
    return lg - directions @ (directions.T @ lg)
