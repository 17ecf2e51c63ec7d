"""Layer-accuracy curves: a probe per layer with cross-validation and a control task.

For each hook (usually ``blocks.{l}.hook_resid_post``) a probe is cross-validated on the
task labels and on Hewitt & Liang's (2019) control labels; the result holds the mean and
spread of both accuracies and the selectivity (task minus control) per layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import HookName
from uncover.core.results import Result
from uncover.data.activations import ActivationSet
from uncover.probing.control import control_labels, cross_validate, last_word


def _mean(xs: list[float]) -> float:
    v = [x for x in xs if not math.isnan(x)]
    return sum(v) / len(v) if v else float("nan")


def _std(xs: list[float]) -> float:
    v = [x for x in xs if not math.isnan(x)]
    if len(v) < 2:
        return 0.0
    m = sum(v) / len(v)
    return (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5


@dataclass
class ProbeCurve(Result):
    """Cross-validated probe accuracy per hook.

    Attributes:
        hooks: the probed hook names, in order.
        accuracy: per hook, the held-out accuracy of each fold.
        control: per hook, the held-out control-task accuracy of each fold (empty lists without control).
        kind: probe kind.
        dataset: dataset name.
        chance: the majority-class rate.
    """

    hooks: list[str]
    accuracy: list[list[float]]
    control: list[list[float]]
    kind: str
    dataset: str
    chance: float

    @property
    def title(self) -> str:
        return f"{self.kind} probe accuracy by layer: {self.dataset}"

    @property
    def layers(self) -> list[int]:
        return [HookName.parse(h).layer if HookName.parse(h).layer is not None else i
                for i, h in enumerate(self.hooks)]

    @property
    def mean(self) -> list[float]:
        return [_mean(a) for a in self.accuracy]

    @property
    def control_mean(self) -> list[float]:
        return [_mean(c) for c in self.control]

    @property
    def selectivity(self) -> list[float]:
        return [a - c for a, c in zip(self.mean, self.control_mean)]

    def best(self) -> tuple[str, float]:
        """The hook with the highest mean accuracy, and that accuracy."""
        i = max(range(len(self.hooks)), key=lambda j: self.mean[j])
        return self.hooks[i], self.mean[i]

    def summary(self) -> str:
        h, a = self.best()
        i = self.hooks.index(h)
        lines = [f"{self.title}; chance {self.chance:.2f}; best {h}: {a:.3f}"
                 + (f" (control {self.control_mean[i]:.3f}, selectivity {self.selectivity[i]:+.3f})"
                    if self.control else "")]
        for j, hook in enumerate(self.hooks):
            c = f"  control {self.control_mean[j]:.3f}  sel {self.selectivity[j]:+.3f}" if self.control else ""
            lines.append(f"  {hook:32s} acc {self.mean[j]:.3f} ± {_std(self.accuracy[j]):.3f}{c}")
        return "\n".join(lines)

    def to_frame(self):
        import pandas as pd

        rows = []
        for j, hook in enumerate(self.hooks):
            rows.append({"hook": hook, "layer": self.layers[j], "accuracy": self.mean[j],
                         "accuracy_std": _std(self.accuracy[j]),
                         "control": self.control_mean[j] if self.control else None,
                         "selectivity": self.selectivity[j] if self.control else None})
        return pd.DataFrame(rows)

    def plot(self):
        import plotly.graph_objects as go

        x = self.layers
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=x, y=self.mean, mode="lines+markers", name="task",
                                 error_y={"type": "data", "array": [_std(a) for a in self.accuracy]}))
        if self.control:
            fig.add_trace(go.Scatter(x=x, y=self.control_mean, mode="lines+markers", name="control task",
                                     error_y={"type": "data", "array": [_std(c) for c in self.control]}))
            fig.add_trace(go.Scatter(x=x, y=self.selectivity, mode="lines", name="selectivity",
                                     line={"dash": "dot"}))
        fig.add_hline(y=self.chance, line_dash="dash", line_color="grey", annotation_text="chance")
        fig.update_layout(title=self.title, xaxis_title="layer", yaxis_title="held-out accuracy",
                          yaxis_range=[min([0.0, *self.selectivity]) - 0.05 if self.control else -0.05, 1.05])
        return fig


def probe_layers(
    acts: ActivationSet,
    hooks: Sequence[str] | None = None,
    *,
    kind: str = "logistic",
    folds: int = 5,
    control: bool = True,
    control_types: Sequence[str] | None = None,
    l2: float = 1e-2,
    seed: int = 0,
    dataset: str = "",
) -> ProbeCurve:
    """Cross-validate a probe at each hook of ``acts`` (default: all), with a control task.

    Folds keep ``acts.groups`` together; control types default to each text's last word.

    >>> from uncover.data.activations import collect, resid_hooks
    >>> from uncover.data.labelled import truth_statements
    >>> acts = collect(model, truth_statements(model), resid_hooks(model, [2, 12]), progress=False)
    >>> curve = probe_layers(acts, folds=3, control=False)  # doctest: +SKIP
    >>> curve.best()[0]  # doctest: +SKIP
    'blocks.12.hook_resid_post'
    """
    if acts.labels is None:
        raise UncoverError("these activations have no labels; collect them from a Labelled set")
    if len(acts) == 0:
        raise UncoverError("empty dataset: no activations to probe")
    hooks = acts.hooks if hooks is None else list(hooks)
    y = acts.labels
    types = list(control_types) if control_types is not None else [last_word(t) for t in acts.texts]
    yc = control_labels(types, y, seed=seed) if control else None
    chance = float(torch.bincount(y).max()) / len(y)
    acc, ctl = [], []
    for h in hooks:
        X = acts[h].flatten(1)
        acc.append(cross_validate(X, y, folds=folds, groups=acts.groups, kind=kind, l2=l2, seed=seed))
        if yc is not None:
            ctl.append(cross_validate(X, yc, folds=folds, groups=acts.groups, kind=kind, l2=l2, seed=seed))
    return ProbeCurve(hooks, acc, ctl, kind, dataset, chance)
