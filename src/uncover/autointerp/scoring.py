"""Scoring explanations by detection and fuzzing (Bills et al. 2023's idea, delphi's two tests).

A *scorer* reads prompts (:mod:`uncover.autointerp.prompts`) and returns, for each, a margin:
positive means it answers ``Yes``. Detection asks, for held-out activating and non-activating
contexts, whether the feature described fires in the text; fuzzing shows held-out activating
contexts twice, once with the firing tokens marked and once with as many other tokens marked
(:func:`~uncover.autointerp.examples.fuzzed`), and asks whether the marks fit the explanation.
Both are scored like a classifier against the truth: balanced accuracy and F1 of ``margin > 0``,
and the AUROC of the margins (free of the scorer's bias towards one answer, which matters for
small scorers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from uncover.autointerp.examples import Context, FeatureContexts, fuzzed
from uncover.autointerp.prompts import Messages, detection_messages, fuzzing_messages

#: prompts -> ``[n]`` margins (``> 0``: the answer is Yes)
Scorer = Callable[[list[Messages]], torch.Tensor]


@dataclass
class Score:
    """How well a scorer's answers match the truth.

    Attributes:
        balanced_accuracy: mean of the true-positive and true-negative rates of ``margin > 0``.
        f1: F1 of ``margin > 0`` (0 when nothing is predicted positive).
        auroc: probability that a positive's margin exceeds a negative's (ties count half).
        n: number of prompts scored.
    """

    balanced_accuracy: float
    f1: float
    auroc: float
    n: int


def classify(margins: torch.Tensor, labels: torch.Tensor) -> Score:
    """Score margins ``[n]`` against labels ``[n]`` (1 positive, 0 negative).

    >>> classify(torch.tensor([2.0, 1.0, -1.0, 0.5]), torch.tensor([1, 1, 0, 0]))
    Score(balanced_accuracy=0.75, f1=0.8, auroc=1.0, n=4)
    """
    m, y = margins.double().flatten(), labels.bool().flatten()
    pred = m > 0
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    tpr = tp / (tp + fn) if tp + fn else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    prec = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * prec * tpr / (prec + tpr) if prec + tpr else 0.0
    pos, neg = m[y], m[~y]
    if len(pos) and len(neg):
        diff = pos[:, None] - neg[None, :]
        auroc = float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
    else:
        auroc = float("nan")
    return Score(round((tpr + tnr) / 2, 6), round(f1, 6), round(auroc, 6), len(m))


def detection(explanation: str, contexts: FeatureContexts, scorer: Scorer) -> Score:
    """Detection: held-out activating contexts (positives) against non-activating ones, shown unmarked."""
    items: list[Context] = [*contexts.active, *contexts.inactive]
    labels = torch.tensor([1] * len(contexts.active) + [0] * len(contexts.inactive))
    return classify(scorer([detection_messages(explanation, c) for c in items]), labels)


def fuzzing(explanation: str, contexts: FeatureContexts, scorer: Scorer, seed: int = 0) -> Score:
    """Fuzzing: each held-out activating context correctly marked (positive) and wrongly marked (negative)."""
    right: Sequence[Context] = contexts.active
    wrong = [fuzzed(c, seed + i) for i, c in enumerate(right)]
    labels = torch.tensor([1] * len(right) + [0] * len(wrong))
    return classify(scorer([fuzzing_messages(explanation, c) for c in [*right, *wrong]]), labels)
