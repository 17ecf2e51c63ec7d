"""Comparisons between grokking runs: weight decay on/off and a training-fraction sweep
(Power et al. 2022, figure 2; Nanda et al. 2023, appendix: without weight decay the model
memorizes and does not generalise within the same budget)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from uncover.core.results import Result
from uncover.dynamics.grokking.config import GrokConfig
from uncover.dynamics.grokking.train import train


def first_step(metrics: pd.DataFrame, col: str, level: float) -> int | None:
    """First step where ``metrics[col] >= level`` (``None`` if never).

    >>> first_step(pd.DataFrame({"step": [0, 10, 20], "test_acc": [0.0, 0.5, 0.95]}), "test_acc", 0.9)
    20
    """
    hit = metrics.loc[metrics[col] >= level, "step"]
    return int(hit.iloc[0]) if len(hit) else None


@dataclass
class GrokSweepResult(Result):
    """Final accuracies and time to memorize / generalise of several runs.

    >>> m = pd.DataFrame({"step": [0, 10], "train_acc": [0.1, 1.0], "test_acc": [0.0, 0.2], "test_loss": [4, 3]})
    >>> r = GrokSweepResult({"wd=1": (GrokConfig(p=7), m)})
    >>> r.to_frame()[["run", "memorized_at", "generalized_at"]].values.tolist()
    [['wd=1', 10, None]]
    """

    runs: dict[str, tuple[GrokConfig, pd.DataFrame]]
    """Run label → (config, metric rows)."""
    level: float = 0.99
    """Accuracy that counts as memorized (train) / generalized (test)."""

    @property
    def title(self) -> str:
        return f"Grokking comparison ({len(self.runs)} runs)"

    def summary(self) -> str:
        f = self.to_frame()
        return self.title + "\n" + f.to_string(index=False)

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for label, (cfg, m) in self.runs.items():
            last = m.iloc[-1]
            rows.append({"run": label, "p": cfg.p, "op": cfg.op, "train_frac": cfg.train_frac,
                         "weight_decay": cfg.weight_decay, "steps": int(last["step"]),
                         "train_acc": float(last["train_acc"]), "test_acc": float(last["test_acc"]),
                         "test_loss": float(last.get("test_loss", float("nan"))),
                         "memorized_at": first_step(m, "train_acc", self.level),
                         "generalized_at": first_step(m, "test_acc", self.level)})
        df = pd.DataFrame(rows)
        for col in ("memorized_at", "generalized_at"):  # integers or None (not floats and NaN)
            df[col] = pd.Series([r[col] for r in rows], dtype=object)
        return df

    def plot(self) -> go.Figure:
        fig = go.Figure()
        for label, (_, m) in self.runs.items():
            line = fig.add_trace(go.Scatter(x=m.step, y=m.test_acc, name=f"{label} test", mode="lines"))
            colour = line.data[-1].line.color
            fig.add_trace(go.Scatter(x=m.step, y=m.train_acc, name=f"{label} train", mode="lines",
                                     line={"dash": "dot", "color": colour}))
        fig.update_layout(title=self.title, xaxis_title="step", yaxis_title="accuracy")
        return fig


def _runs(cfgs: dict[str, GrokConfig], out: str | Path | None, threads: int | None, progress: bool,
          ) -> GrokSweepResult:
    runs = {}
    for label, cfg in cfgs.items():
        d = None if out is None else Path(out) / label.replace("=", "_")
        runs[label] = (cfg, train(cfg, d, progress=progress, threads=threads).metrics)
    return GrokSweepResult(runs)


def weight_decay_comparison(cfg: GrokConfig, out: str | Path | None = None, *, threads: int | None = None,
                            progress: bool = True) -> GrokSweepResult:
    """Train ``cfg`` and the same run without weight decay, with the same budget.

    >>> r = weight_decay_comparison(GrokConfig(p=7, d_model=8, n_heads=2, d_mlp=16, steps=10), progress=False)
    >>> r.to_frame()["weight_decay"].tolist()
    [1.0, 0.0]
    """
    return _runs({f"wd={cfg.weight_decay:g}": cfg, "wd=0": cfg.replace(weight_decay=0.0)}, out, threads, progress)


def fraction_sweep(cfg: GrokConfig, fractions: Sequence[float] = (0.2, 0.3, 0.5, 0.7),
                   out: str | Path | None = None, *, threads: int | None = None,
                   progress: bool = True) -> GrokSweepResult:
    """Train ``cfg`` once per training fraction (more data: faster generalisation).

    >>> r = fraction_sweep(GrokConfig(p=7, d_model=8, n_heads=2, d_mlp=16, steps=5), [0.3, 0.6], progress=False)
    >>> r.to_frame()["train_frac"].tolist()
    [0.3, 0.6]
    """
    return _runs({f"frac={f:g}": cfg.replace(train_frac=f) for f in fractions}, out, threads, progress)
