"""Fourier analysis of the modular-arithmetic circuit (Nanda et al. 2023, sections 4-5).

The model computes ``a + b mod p`` with a few "key frequencies" ``w_k = 2πk/p``: it embeds
tokens as ``cos(w_k a), sin(w_k a)``, its neurons read ``cos(w_k (a+b))`` and the logits are
``Σ_k cos(w_k (a+b-c))``. For ``*`` and ``/`` the same holds over discrete logarithms
(``w_k = 2πk/(p-1)`` applied to ``log_g a``; see :mod:`~uncover.dynamics.grokking.groups`), and
every function here takes the operation's basis from ``cfg.op``. This module owns the norm of
each frequency in the embedding and in the neuron-to-logit map, the neurons' frequencies, the key
frequencies, the Gini sparsity measure and the restricted / excluded projections of the logits
(keep only the key frequencies of the answer coordinate ``a ± b``; remove them).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from uncover.dynamics.grokking.config import OPS, GrokConfig
from uncover.dynamics.grokking.groups import OpBasis, group_pairs, op_basis, pair_coordinate

FOURIER_OPS = OPS
"""Operations with Fourier progress measures (all four: ``* /`` over discrete logarithms)."""


def fourier_basis(p: int) -> tuple[torch.Tensor, list[str]]:
    """Orthonormal Fourier basis over ``0..p-1`` (``p`` odd): ``[p, p]`` rows and their names.

    Row 0 is the constant, rows ``2k-1, 2k`` are ``cos(2πkx/p)``, ``sin(2πkx/p)``
    (the additive case of :func:`~uncover.dynamics.grokking.groups.op_basis`).

    >>> B, names = fourier_basis(5)
    >>> names
    ['const', 'cos 1', 'sin 1', 'cos 2', 'sin 2']
    >>> torch.allclose(B @ B.T, torch.eye(5, dtype=B.dtype), atol=1e-12)
    True
    """
    b = op_basis(p, "+")
    return b.matrix, b.names


def freq_norms(coeffs: torch.Tensor, freqs: torch.Tensor | None = None) -> torch.Tensor:
    """Norm per frequency ``[n_freqs]`` (index 0 = constant) of Fourier coefficients ``[p, ...]``.

    ``freqs`` ``[p]`` is each coefficient row's frequency (:attr:`OpBasis.freqs`); by default the
    additive layout ``const, cos 1, sin 1, cos 2, ...``.

    >>> freq_norms(torch.tensor([[3.0], [3.0], [4.0]])).tolist()
    [3.0, 5.0]
    >>> freq_norms(torch.tensor([[3.0], [4.0], [1.0]]), torch.tensor([0, 0, 1])).tolist()
    [5.0, 1.0]
    """
    n = coeffs.shape[0]
    if freqs is None:
        freqs = torch.tensor([(i + 1) // 2 for i in range(n)])
    sq = coeffs.reshape(n, -1).double().pow(2).sum(1)
    return torch.zeros(int(freqs.max()) + 1, dtype=torch.float64).index_add_(0, freqs, sq).sqrt()


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


def embed_freq_norms(model: Any, cfg: GrokConfig) -> torch.Tensor:
    """Norm of each frequency in the number-token embedding ``W_E[:p]``: ``[(p+1)/2]``."""
    b = op_basis(cfg.p, cfg.op)
    w_e = model.transformer.wte.weight.detach()[: cfg.p].double()  # [p, d_model]
    return freq_norms(b.matrix @ w_e, b.freqs)


def embed_gini(model: Any, cfg: GrokConfig) -> float:
    """Gini of the embedding's per-frequency norms (frequency 0 excluded)."""
    return gini(embed_freq_norms(model, cfg)[1:])


def logit_map_gini(model: Any, cfg: GrokConfig) -> float:
    """Gini of the per-frequency norms of the neuron-to-logit map ``W_out @ W_U[:, :p]`` over outputs."""
    b = op_basis(cfg.p, cfg.op)
    w_l = model.transformer.h[0].mlp.c_proj.weight.detach().double() @ model.lm_head.weight.detach()[: cfg.p].double().T
    return gini(freq_norms(b.matrix @ w_l.T, b.freqs)[1:])  # [p (output freq), d_mlp]


def neuron_frequencies(acts: torch.Tensor, op: str = "+") -> tuple[torch.Tensor, torch.Tensor]:
    """Each neuron's dominant frequency and the fraction of its variance that frequency explains.

    ``acts`` ``[p, p, d_mlp]`` are activations over the ``(a, b)`` grid, transformed in the basis of
    ``op``. A frequency ``k`` owns the 2-D Fourier terms with frequency ``k`` on one axis and ``0``
    or ``k`` on the other. Returns ``(freq [d_mlp] (1..(p-1)/2), fraction [d_mlp])``.

    >>> p = 7; a = torch.arange(p).double()
    >>> acts = torch.cos(2 * math.pi * 3 * (a[:, None] + a[None, :]) / p)[..., None]
    >>> f, fve = neuron_frequencies(acts)
    >>> int(f[0]), round(float(fve[0]), 6)
    (3, 1.0)
    """
    b = op_basis(acts.shape[0], op)
    c = torch.einsum("ia,abn,jb->ijn", b.matrix, acts.double(), b.matrix).pow(2)  # [p, p, d_mlp]
    f = b.freqs
    c[(f == 0)[:, None] & (f == 0)[None, :]] = 0.0  # the part constant along both token groups
    total = c.sum((0, 1)).clamp_min(1e-30)
    per = []
    for k in range(1, b.n_freqs):
        own = ((f == k)[:, None] & ((f == 0) | (f == k))[None, :]) | ((f == 0)[:, None] & (f == k)[None, :])
        per.append(c[own].sum(0))
    frac = torch.stack(per) / total  # [n_freq, d_mlp]
    best = frac.max(0)
    return best.indices + 1, best.values


@torch.no_grad()
def grid_run(model: Any, cfg: GrokConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer logits ``[p*p, p]`` and last-position neuron activations ``[p*p, d_mlp]`` on every pair.

    Rows are in ``(a, b)`` order (``a * p + b``), including ``b = 0`` for ``/``.
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
    _, acts = grid_run(model, cfg)
    acts = acts.view(cfg.p, cfg.p, -1)
    live = acts.flatten(0, 1).var(0) > 1e-8
    freq, fve = neuron_frequencies(acts[..., live], cfg.op)
    good = freq[fve >= min_fve]
    counts = torch.bincount(good, minlength=(cfg.p + 1) // 2)
    need = max(1, math.ceil(min_share * int(live.sum())))
    keys = [k for k in range(1, len(counts)) if counts[k] >= need]
    if not keys:
        norms = embed_freq_norms(model, cfg)[1:]
        keys = [k + 1 for k in range(len(norms)) if norms[k] >= 0.5 * norms.max()]
    return keys


def key_directions(p: int, freqs: list[int], op: str = "+") -> torch.Tensor:
    """Orthonormal directions ``[p*p, n]`` over the ``(a, b)`` grid: ``cos, sin(w_k s)`` of the answer coordinate.

    ``s = a ± b`` (``w_k = 2πk/p``) for ``+ -``; ``s = log a ± log b`` (``w_k = 2πk/(p-1)``, zero on
    pairs with a zero token) for ``* /``. The sine of the frequency ``(p-1)/2`` of ``* /`` vanishes and
    is left out.

    >>> d = key_directions(7, [1, 3])
    >>> torch.allclose(d.T @ d, torch.eye(4, dtype=d.dtype), atol=1e-12)
    True
    >>> key_directions(7, [1, 3], "*").shape
    torch.Size([49, 3])
    """
    basis: OpBasis = op_basis(p, op)
    s = pair_coordinate(p, op).double()
    inside = group_pairs(p, op).double()
    cols = []
    for k in freqs:
        w = 2 * math.pi * k / basis.order
        cols.append(torch.cos(w * s) * inside)
        if 2 * k != basis.order:
            cols.append(torch.sin(w * s) * inside)
    if not cols:
        return torch.zeros(p * p, 0, dtype=torch.float64)
    d = torch.stack(cols, 1)
    return d / d.norm(dim=0, keepdim=True)


def restricted_logits(logits: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Logits ``[n_pairs, p]`` keeping only their mean over pairs and the key-frequency components.

    ``restricted + excluded == logits + logits.mean(0)`` (the mean is kept by both).
    """
    lg = logits.double()
    return lg.mean(0, keepdim=True) + directions @ (directions.T @ lg)


def excluded_logits(logits: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Logits ``[n_pairs, p]`` with the key-frequency components of the answer coordinate removed."""
    lg = logits.double()
    return lg - directions @ (directions.T @ lg)
