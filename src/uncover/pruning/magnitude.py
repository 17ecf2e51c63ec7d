"""Magnitude pruning (the baseline of Han et al. 2015, as used in Sun et al. 2023 and Frantar & Alistarh 2023).

Removes the weights of smallest absolute value: within each whole weight matrix for
unstructured sparsity (the layer-wise baseline of the Wanda and SparseGPT papers), within each
group of M consecutive inputs of a row for N:M. Needs no calibration data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from uncover.pruning.base import Pruning, matrix_mask, row_mask
from uncover.pruning.calibrate import InputStats, prune_linears

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def magnitude_weight(
    w: torch.Tensor, stats: InputStats | None = None, sparsity: float = 0.5, nm: tuple[int, int] | None = None
) -> torch.Tensor:
    """``w`` ``[d_out, d_in]`` with its smallest-magnitude weights set to zero.

    >>> magnitude_weight(torch.tensor([[1., -4.], [3., 2.]]), sparsity=0.5)
    tensor([[ 0., -4.],
            [ 3.,  0.]])
    """
    score = w.abs()
    mask = row_mask(score, sparsity, nm) if nm is not None else matrix_mask(score, sparsity)
    return w.masked_fill(mask, 0.0)


def magnitude_prune(model: HookedModel, sparsity: float | None = 0.5, pattern: str | None = None) -> Pruning:
    """Magnitude-prune every block linear of ``model`` in place; the result reverts it.

    >>> p = magnitude_prune(tiny("llama"), 0.5)  # a tiny random model; the embedded one takes seconds
    >>> round(p.overall_sparsity(), 2)
    0.5
    >>> p.revert()
    """
    return prune_linears(model, "magnitude", sparsity, pattern, magnitude_weight, options={"scope": "matrix"})
