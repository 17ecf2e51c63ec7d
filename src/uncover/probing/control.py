"""Cross-validation, control tasks and selectivity (Hewitt & Liang 2019, "Designing and
Interpreting Probes with Control Tasks").

A probe's accuracy alone does not say whether the representation *encodes* a property or
the probe *learned* it. A control task gives every word type (here: every value of a
``types`` key, by default each text's last word) a random label drawn from the task's own
label distribution; a probe can reach it only by memorising types. Selectivity is the
task accuracy minus the control accuracy, both on held-out folds. Folds keep ``groups``
(for instance a fact's subject, so that its true and false statements) together.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import torch

from uncover.core.errors import UncoverError
from uncover.probing.linear import fit_probe


def last_word(text: str) -> str:
    """The last word of ``text``, lower-cased and without punctuation (the default control type).

    >>> last_word("The capital of France is Paris.")
    'paris'
    """
    words = re.findall(r"\w+", text.lower())
    return words[-1] if words else ""


def control_labels(types: Sequence[str], y: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """``[n]`` control labels: each distinct type gets one label drawn from the empirical distribution of ``y``.

    >>> c = control_labels(["a", "b", "a"], torch.tensor([0, 1, 1]))
    >>> bool(c[0] == c[2])
    True
    """
    if len(types) != y.shape[0]:
        raise UncoverError(f"{len(types)} control types but {y.shape[0]} labels")
    rng = random.Random(seed)
    pool = y.tolist()
    table = {t: rng.choice(pool) for t in sorted(set(types))}
    return torch.tensor([table[t] for t in types], dtype=torch.long)


def folds_of(n: int, k: int, *, groups: Sequence[str] | None = None, seed: int = 0) -> list[torch.Tensor]:
    """``k`` disjoint test-index sets covering ``0..n-1``; members of a group stay in one fold.

    >>> [f.tolist() for f in folds_of(4, 2, groups=["a", "a", "b", "b"])]
    [[0, 1], [2, 3]]
    """
    if k < 2:
        raise UncoverError(f"need at least 2 folds, got {k}")
    keys = list(groups) if groups is not None else [str(i) for i in range(n)]
    uniq = sorted(set(keys))
    if len(uniq) < k:
        raise UncoverError(f"{len(uniq)} groups cannot fill {k} folds; use fewer folds or more data")
    order = torch.randperm(len(uniq), generator=torch.Generator().manual_seed(seed)).tolist()
    fold_of = {uniq[j]: i % k for i, j in enumerate(order)}
    return [torch.tensor([i for i in range(n) if fold_of[keys[i]] == f]) for f in range(k)]


def cross_validate(
    X: torch.Tensor, y: torch.Tensor, *, folds: int = 5, groups: Sequence[str] | None = None, kind: str = "logistic",
    l2: float = 1e-2, seed: int = 0,
) -> list[float]:
    """Held-out accuracy of a probe in each of ``folds`` folds.

    >>> X = torch.randn(60, 4, generator=torch.Generator().manual_seed(0))
    >>> accs = cross_validate(X, (X[:, 0] > 0).long(), folds=3)
    >>> min(accs) > 0.8
    True
    """
    out = []
    for test in folds_of(X.shape[0], folds, groups=groups, seed=seed):
        train = torch.ones(X.shape[0], dtype=torch.bool)
        train[test] = False
        if y[train].unique().numel() < 2:  # a fold without both classes: nothing to learn from
            out.append(float("nan"))
            continue
        p = fit_probe(X[train], y[train], kind=kind, l2=l2, seed=seed)
        out.append(p.score(X[test], y[test]))
    return out
