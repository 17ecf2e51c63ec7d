"""Wanda: pruning by weights and activations (Sun, Liu, Bair & Kolter 2023, "A Simple and Effective
Pruning Approach for Large Language Models").

Each weight is scored ``|W_ij| · ‖X_j‖₂``, the norm of input feature ``j`` over all calibration
tokens, and the lowest scores are removed *per output row* (or M-N of every M consecutive inputs
of a row for N:M). No weight update. Calibration is sequential (:mod:`uncover.pruning.calibrate`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from uncover.pruning.base import Pruning, PruningError, row_mask
from uncover.pruning.calibrate import InputStats, calibration_tokens, prune_linears

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def wanda_score(w: torch.Tensor, col_norm: torch.Tensor) -> torch.Tensor:
    """``|W| · ‖X_j‖₂`` ``[d_out, d_in]`` from ``w`` ``[d_out, d_in]`` and ``col_norm`` ``[d_in]``.

    >>> wanda_score(torch.tensor([[1., -2.]]), torch.tensor([3., 1.]))
    tensor([[3., 2.]])
    """
    return w.abs().to(col_norm.dtype) * col_norm.unsqueeze(0)


def wanda_weight(
    w: torch.Tensor, stats: InputStats | None, sparsity: float = 0.5, nm: tuple[int, int] | None = None
) -> torch.Tensor:
    """``w`` with the lowest Wanda scores of each row set to zero.

    >>> s = InputStats("norm"); s.add(torch.tensor([[3., 1.]]))
    >>> wanda_weight(torch.tensor([[1., -2.], [1., -4.]]), s, 0.5)
    tensor([[ 1.,  0.],
            [ 0., -4.]])
    """
    if stats is None:
        raise PruningError("Wanda needs calibration statistics of the layer's inputs")
    return w.masked_fill(row_mask(wanda_score(w, stats.col_norm), sparsity, nm), 0.0)


def wanda_prune(
    model: HookedModel,
    sparsity: float | None = 0.5,
    pattern: str | None = None,
    *,
    tokens: torch.Tensor | None = None,
    n_samples: int = 16,
    seq_len: int = 128,
    seed: int = 0,
) -> Pruning:
    """Wanda-prune every block linear of ``model`` in place; the result reverts it.

    ``tokens``: calibration blocks ``[n, seq]`` (default: ``n_samples`` blocks of ``seq_len``
    tokens from the embedded corpus's train split).

    >>> m = tiny("llama")  # a tiny random model; on the embedded model: wanda_prune(model, 0.5)
    >>> p = wanda_prune(m, 0.5, tokens=torch.randint(3, 64, (2, 8)))
    >>> round(p.overall_sparsity(), 2)
    0.5
    >>> p.revert()
    """
    from uncover.pruning.base import resolve_target

    resolve_target(sparsity, pattern)  # fail before reading the corpus
    if tokens is None:
        tokens = calibration_tokens(model, n_samples, seq_len, seed)
    return prune_linears(model, "wanda", sparsity, pattern, wanda_weight, stats="norm", tokens=tokens,
                         options={"n_samples": int(tokens.shape[0]), "seq_len": int(tokens.shape[1]), "seed": seed})
