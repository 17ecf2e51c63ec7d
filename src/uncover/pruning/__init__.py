"""Pruning: magnitude, Wanda, SparseGPT (unstructured and N:M), structured heads/neurons, evaluation.

Every pruning changes the model in place and returns a :class:`Pruning` that reverts it
bit-exactly, saves it, and reports the measured sparsity per module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uncover.pruning.base import METHODS, Pruning, PruningError
from uncover.pruning.magnitude import magnitude_prune
from uncover.pruning.sparsegpt import sparsegpt_prune
from uncover.pruning.wanda import wanda_prune

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def prune(model: HookedModel, method: str = "wanda", sparsity: float | None = 0.5, pattern: str | None = None,
          **options: Any) -> Pruning:
    """Prune ``model`` in place with ``method`` (``magnitude``, ``wanda`` or ``sparsegpt``).

    ``pattern``: ``"2:4"``/``"4:8"`` (N:M; the sparsity is then ``1 - N/M``). Other options go
    to the method (``tokens``, ``n_samples``, ``seq_len``, ``damp`` ...).

    >>> m = tiny("llama")  # a tiny random model: pruning the embedded one takes seconds per method
    >>> p = prune(m, "wanda", 0.5, tokens=torch.randint(3, 64, (2, 8)))
    >>> round(p.overall_sparsity(), 2)
    0.5
    >>> p.revert()
    """
    fns = {"magnitude": magnitude_prune, "wanda": wanda_prune, "sparsegpt": sparsegpt_prune}
    if method not in fns:
        raise PruningError(f"unknown pruning method {method!r}; valid: {', '.join(METHODS)}")
    return fns[method](model, sparsity, pattern, **options)


__all__ = ["Pruning", "PruningError", "prune", "magnitude_prune", "wanda_prune", "sparsegpt_prune"]
