"""Metrics of last-position logits, shared by patching, neuron ablation and circuit discovery.

A metric maps logits ``[batch, d_vocab]`` (the position being predicted) to ``[batch]``.
:func:`normalise` turns raw values into recovery: 0 = the corrupt run, 1 = the clean run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from uncover.core.errors import UncoverError

Metric = Callable[[torch.Tensor], torch.Tensor]


def logit_diff(answer: int, wrong: int) -> Metric:
    """``logit[answer] - logit[wrong]``.

    >>> logit_diff(0, 1)(torch.tensor([[3.0, 1.0]]))
    tensor([2.])
    """
    return lambda logits: logits[..., answer] - logits[..., wrong]


def prob(answer: int) -> Metric:
    """Probability of ``answer``.

    >>> round(float(prob(0)(torch.tensor([[0.0, 0.0]]))[0]), 3)
    0.5
    """
    return lambda logits: logits.float().softmax(-1)[..., answer]


def logprob(answer: int) -> Metric:
    """Log-probability of ``answer``.

    >>> round(float(logprob(0)(torch.tensor([[0.0, 0.0]]))[0]), 4)
    -0.6931
    """
    return lambda logits: logits.float().log_softmax(-1)[..., answer]


METRICS = ("logit_diff", "prob", "logprob")


def make_metric(name: str, answer: int, wrong: int) -> Metric:
    """A metric by name; the valid names are in :data:`METRICS`.

    >>> make_metric("logit_diff", 0, 1)(torch.tensor([[3.0, 1.0]]))
    tensor([2.])
    """
    if name == "logit_diff":
        return logit_diff(answer, wrong)
    if name == "prob":
        return prob(answer)
    if name == "logprob":
        return logprob(answer)
    raise UncoverError(f"unknown metric {name!r}; valid: {', '.join(METRICS)}")


def normalise(values: torch.Tensor, clean: float, corrupt: float) -> torch.Tensor:
    """Recovery ``(v - corrupt) / (clean - corrupt)``: 0 = corrupt behaviour, 1 = clean behaviour.

    >>> normalise(torch.tensor([1.0, 3.0]), clean=3.0, corrupt=1.0)
    tensor([0., 1.])
    """
    span = clean - corrupt
    if abs(span) < 1e-9:
        raise UncoverError("clean and corrupt runs give the same metric; nothing to recover")
    return (values - corrupt) / span
