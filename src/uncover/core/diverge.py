"""Training that diverged stops with one clear error instead of finishing with NaN weights.

Every optimisation loop of uncover (SAE, transcoder and crosscoder training, grokking and
memorization runs, tuned lenses, probes, CCS, the superposition toys, ROME/MEMIT's value
optimisation) calls :func:`check_finite` on its loss each step and on its parameters before it
saves them. A learning rate (or a scale, a coefficient) too large for the problem has no fixed
bound that a config could declare, but its effect is plain: the loss or the weights become NaN or
infinite. That is refused with a :class:`TrainingDiverged` naming the step, the learning rate and the
fix, which the CLI prints as one ``uncover: error:`` line (exit 2), and nothing non-finite is saved:
a run directory keeps only its last finite checkpoint and is never marked finished.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from uncover.core.errors import UncoverError


class TrainingDiverged(UncoverError):
    """The loss or the parameters of a training loop became NaN or infinite."""


def _bad(x: Any) -> str | None:
    """``"NaN"``, ``"infinite"`` or None (finite) for a number or a tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if not x.is_floating_point():
            return None
        if bool(torch.isnan(x).any()):
            return "NaN"
        return None if bool(torch.isfinite(x).all()) else "infinite"
    x = float(x)
    return "NaN" if math.isnan(x) else (None if math.isfinite(x) else "infinite")


def check_finite(step: int, *, loss: Any = None, params: Iterable[torch.Tensor] | None = None,
                 lr: float | None = None, what: str = "training", fix: str = "lower --lr") -> None:
    """Raise :class:`TrainingDiverged` when ``loss`` or any of ``params`` is NaN or infinite.

    ``step``: the step being checked (shown); ``lr``: the learning rate in use (shown); ``what``:
    the loop (``"SAE training"``); ``fix``: what to change.

    >>> check_finite(3, loss=torch.tensor(0.5), params=[torch.ones(2)])
    >>> check_finite(12, loss=float("nan"), lr=1e30, what="grok training")
    Traceback (most recent call last):
    ...
    uncover.core.diverge.TrainingDiverged: grok training diverged: the loss became NaN at step 12 (lr 1e+30); lower --lr
    >>> check_finite(4, params=[torch.tensor([1.0, float("inf")])])
    Traceback (most recent call last):
    ...
    uncover.core.diverge.TrainingDiverged: training diverged: the weights became infinite at step 4; lower --lr
    """
    where = [("the loss", loss)] if loss is not None else []
    where += [("the weights", p) for p in (params or ())]
    for name, value in where:
        kind = _bad(value)
        if kind is not None:
            at = f" (lr {lr:g})" if lr is not None else ""
            raise TrainingDiverged(f"{what} diverged: {name} became {kind} at step {step}{at}; {fix}")


def check_improved(before: float, after: float, *, lr: float | None = None, what: str = "training",
                   fix: str = "lower --lr", factor: float = 2.0) -> None:
    """Raise :class:`TrainingDiverged` when training ended with a loss ``factor`` times worse than where it began.

    For loops whose output passes through a norm, where a step far too large leaves the loss finite
    but the result worse than no training at all (a tuned lens against the logit lens it starts from).

    >>> check_improved(2.0, 0.5)
    >>> check_improved(0.0016, 0.006, lr=1e30, what="lens training")
    Traceback (most recent call last):
    ...
    uncover.core.diverge.TrainingDiverged: lens training diverged: the loss rose from 0.0016 to 0.006 (lr 1e+30); \
lower --lr
    """
    check_finite(0, loss=after, lr=lr, what=what, fix=fix)
    if after > factor * before:
        at = f" (lr {lr:g})" if lr is not None else ""
        raise TrainingDiverged(f"{what} diverged: the loss rose from {before:.4g} to {after:.4g}{at}; {fix}")
