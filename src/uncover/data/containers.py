"""The two containers of labelled data: :class:`Labelled` texts and :class:`ContrastPairs`.

:class:`Labelled` holds texts with integer labels and optional *groups* used by control
tasks (Hewitt & Liang 2019); :class:`ContrastPairs` a positive and a negative text per item
(Burns et al. 2022; Zou et al. 2023). The built-in sets and file loaders that make them are
in :mod:`uncover.data.labelled` (which re-exports both classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from uncover.core.errors import UncoverError


@dataclass
class Labelled:
    """Texts with integer labels.

    Attributes:
        name: what the set is (shown in results).
        texts: one text per example.
        labels: ``0 .. n_classes - 1`` per example.
        groups: the "type" of each example for control tasks (examples of a group share a
            random control label); ``None``: every example is its own group.
        label_names: a name per label value.
    """

    name: str
    texts: list[str]
    labels: list[int]
    groups: list[str] | None = None
    label_names: tuple[str, ...] = ("0", "1")

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise UncoverError(f"{self.name}: {len(self.texts)} texts but {len(self.labels)} labels")
        if self.groups is not None and len(self.groups) != len(self.texts):
            raise UncoverError(f"{self.name}: {len(self.texts)} texts but {len(self.groups)} groups")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def y(self) -> torch.Tensor:
        """``[n]`` labels as a long tensor."""
        return torch.tensor(self.labels, dtype=torch.long)

    def subset(self, idx: Sequence[int]) -> Labelled:
        """The examples at ``idx``, in that order."""
        g = None if self.groups is None else [self.groups[i] for i in idx]
        return Labelled(self.name, [self.texts[i] for i in idx], [self.labels[i] for i in idx], g, self.label_names)

    def check(self, min_per_class: int = 2) -> Labelled:
        """Raise ``UncoverError`` unless there are at least two classes with ``min_per_class`` examples each."""
        if not self.texts:
            raise UncoverError(f"{self.name}: empty dataset (no texts)")
        counts = {c: self.labels.count(c) for c in set(self.labels)}
        if len(counts) < 2 or min(counts.values()) < min_per_class:
            raise UncoverError(f"{self.name}: need at least 2 classes with {min_per_class} examples each, "
                               f"got counts {dict(sorted(counts.items()))}")
        return self


@dataclass
class ContrastPairs:
    """Pairs of texts that differ in one property (``positive`` has it, ``negative`` not).

    Attributes:
        name: what the set is.
        positive, negative: the two texts of each pair.
        labels: for CCS-style pairs, which answer is correct (1: the positive text is the true
            one); used only to report accuracy, never for training. ``None`` when not known.
        groups: a type per pair (as in :class:`Labelled`).
    """

    name: str
    positive: list[str]
    negative: list[str]
    labels: list[int] | None = None
    groups: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if len(self.positive) != len(self.negative):
            raise UncoverError(f"{self.name}: {len(self.positive)} positive but {len(self.negative)} negative texts")
        if self.labels is not None and len(self.labels) != len(self.positive):
            raise UncoverError(f"{self.name}: {len(self.positive)} pairs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.positive)

    def subset(self, idx: Sequence[int]) -> ContrastPairs:
        """The pairs at ``idx``, in that order."""
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return ContrastPairs(self.name, pick(self.positive), pick(self.negative), pick(self.labels),
                             pick(self.groups))

    def check(self) -> ContrastPairs:
        """Raise ``UncoverError`` for an empty set."""
        if not self.positive:
            raise UncoverError(f"{self.name}: empty dataset (no pairs)")
        return self

    def as_labelled(self) -> Labelled:
        """Every text once, labelled 1 (positive) or 0 (negative), grouped by pair."""
        n = len(self)
        g = self.groups or [str(i) for i in range(n)]
        return Labelled(self.name, self.positive + self.negative, [1] * n + [0] * n, g + g, ("negative", "positive"))
