"""Reading vectors (Zou et al. 2023, "Representation Engineering: A Top-Down Approach to AI
Transparency"): linear artificial tomography (LAT) and difference-in-means, per layer.

For contrast pairs ``(x⁺, x⁻)`` and a layer, the paired differences ``d = a(x⁺) − a(x⁻)`` are
taken. LAT (as in the paper's code) flips the sign of a random half of them (so that the
mean no longer dominates), centres them and takes the first principal component;
difference-in-means is the mean of ``d``. Both are oriented so that ``x⁺`` reads higher.
Reading accuracy on held-out pairs is the fraction of pairs with ``v·a(x⁺) > v·a(x⁻)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import HookName
from uncover.core.results import Result
from uncover.data.activations import ActivationSet
from uncover.probing.control import folds_of
from uncover.steering.vectors import SteeringVector

METHODS = ("pca", "mean")


def lat_direction(diffs: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """``[d]`` unit first principal component of sign-randomised, centred paired differences ``[n, d]``.

    >>> d = torch.tensor([[2.0, 0.1], [1.8, -0.1], [2.2, 0.0]])
    >>> lat_direction(d).round(decimals=1).tolist()
    [1.0, 0.0]
    """
    if diffs.dim() != 2 or diffs.shape[0] < 2:
        raise UncoverError(f"LAT needs at least two differences [n, d], got shape {tuple(diffs.shape)}")
    g = torch.Generator().manual_seed(seed)
    flip = torch.where(torch.rand(diffs.shape[0], generator=g) < 0.5, -1.0, 1.0)
    flip[0], flip[1] = 1.0, -1.0  # never all one sign
    x = diffs.float() * flip[:, None]
    x = x - x.mean(0)
    v = torch.linalg.svd(x, full_matrices=False).Vh[0]
    return v if float((diffs.float() @ v).mean()) >= 0 else -v


def mean_direction(diffs: torch.Tensor) -> torch.Tensor:
    """``[d]`` unit mean of paired differences ``[n, d]``.

    >>> mean_direction(torch.tensor([[3.0, 0.0], [1.0, 0.0]])).tolist()
    [1.0, 0.0]
    """
    m = diffs.float().mean(0)
    if float(m.norm()) == 0.0:
        raise UncoverError("the mean difference is zero; the pairs do not differ at this hook")
    return m / m.norm()


def pair_accuracy(v: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Fraction of pairs with ``v·pos > v·neg``."""
    return float(((pos.float() @ v) > (neg.float() @ v)).float().mean())


@dataclass
class ReadingResult(Result):
    """Reading vectors and held-out reading accuracy per hook.

    Attributes:
        hooks: hooks, in order.
        accuracy: method -> held-out pair accuracy per hook.
        directions: method -> ``[n_hooks, d]`` unit reading vectors (trained on the training pairs).
        n_train, n_test: numbers of pairs.
        dataset: dataset name.
    """

    hooks: list[str]
    accuracy: dict[str, list[float]]
    directions: dict[str, torch.Tensor]
    n_train: int
    n_test: int
    dataset: str = ""

    @property
    def title(self) -> str:
        return f"RepE reading accuracy by layer: {self.dataset}"

    @property
    def layers(self) -> list[int]:
        return [HookName.parse(h).layer or 0 for h in self.hooks]

    def vector(self, method: str = "pca", scale_to: torch.Tensor | None = None) -> SteeringVector:
        """The reading vectors of ``method`` as a :class:`SteeringVector` (unit norm per layer)."""
        if method not in self.directions:
            raise UncoverError(f"unknown method {method!r}; valid: {', '.join(self.directions)}")
        point = HookName.parse(self.hooks[0]).leaf
        return SteeringVector({la: self.directions[method][i] for i, la in enumerate(self.layers)}, point,
                              meta={"method": f"repe-{method}", "dataset": self.dataset})

    def summary(self) -> str:
        lines = [f"{self.title} ({self.n_train} train / {self.n_test} test pairs)"]
        for i, h in enumerate(self.hooks):
            lines.append(f"  {h:32s} " + "  ".join(f"{m} {a[i]:.3f}" for m, a in self.accuracy.items()))
        return "\n".join(lines)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"hook": self.hooks, "layer": self.layers, **self.accuracy})

    def plot(self):
        import plotly.graph_objects as go

        fig = go.Figure()
        for m, a in self.accuracy.items():
            fig.add_trace(go.Scatter(x=self.layers, y=a, mode="lines+markers", name={"pca": "LAT (PCA)"}.get(
                m, "difference in means")))
        fig.add_hline(y=0.5, line_dash="dash", line_color="grey", annotation_text="chance")
        fig.update_layout(title=self.title, xaxis_title="layer", yaxis_title="held-out pair accuracy",
                          yaxis_range=[0, 1.05])
        return fig


def reading_vectors(
    pos: ActivationSet, neg: ActivationSet, hooks: Sequence[str] | None = None, *,
    groups: Sequence[str] | None = None, test_fraction: float = 0.5, seed: int = 0, dataset: str = "",
) -> ReadingResult:
    """LAT and difference-in-means reading vectors per hook, with held-out pair accuracy.

    >>> from uncover.data.activations import collect, resid_hooks
    >>> from uncover.data.labelled import honesty_pairs
    >>> pairs = honesty_pairs()
    >>> hooks = resid_hooks(model, [3, 12])
    >>> pos = collect(model, pairs.positive, hooks, progress=False)
    >>> neg = collect(model, pairs.negative, hooks, progress=False)
    >>> r = reading_vectors(pos, neg, groups=pairs.groups)
    """
    n = len(pos)
    if n == 0:
        raise UncoverError("empty dataset: no contrast pairs")
    if len(neg) != n:
        raise UncoverError(f"{n} positive but {len(neg)} negative activations")
    if n < 4:
        raise UncoverError(f"need at least 4 pairs (2 to train, 2 to test), got {n}")
    hooks = pos.hooks if hooks is None else list(hooks)
    k = max(2, round(1 / test_fraction))
    test = folds_of(n, k, groups=groups, seed=seed)[0]
    train = torch.ones(n, dtype=torch.bool)
    train[test] = False
    acc: dict[str, list[float]] = {m: [] for m in METHODS}
    dirs: dict[str, list[torch.Tensor]] = {m: [] for m in METHODS}
    for h in hooks:
        xp, xn = pos[h].flatten(1).float(), neg[h].flatten(1).float()
        d = (xp - xn)[train]
        if float(d.mean(0).norm()) == 0.0:
            raise UncoverError(f"{h}: the positive and negative texts of the training pairs have the same "
                               "activations here (as at layer 0's resid_pre, where the last token sees only itself), "
                               "so there is no direction to read; choose other layers")
        for m, v in (("pca", lat_direction(d, seed=seed)), ("mean", mean_direction(d))):
            acc[m].append(pair_accuracy(v, xp[test], xn[test]))
            dirs[m].append(v)
    return ReadingResult(hooks, acc, {m: torch.stack(v) for m, v in dirs.items()}, int(train.sum()),
                         int(test.numel()), dataset)
