"""``GrokkingResult``: training curves, progress measures and phases of a grokking run
(Nanda et al. 2023, figures 1, 6 and 7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from uncover.core.results import Result
from uncover.dynamics.grokking.config import GrokConfig

PHASE_COLOURS = {"memorization": "rgba(231,76,60,0.10)", "circuit formation": "rgba(241,196,15,0.12)",
                 "cleanup": "rgba(46,204,113,0.12)"}


@dataclass
class GrokkingResult(Result):
    """Curves of one grokking run.

    >>> r = GrokkingResult(GrokConfig(p=7), pd.DataFrame({"step": [0], "train_acc": [0.1], "test_acc": [0.1]}),
    ...                    pd.DataFrame({"step": [0], "restricted_loss": [2.0]}), [1], [1.0, 2.0, 0.5, 0.1])
    >>> list(r.to_frame().columns)
    ['step', 'train_acc', 'test_acc', 'restricted_loss']
    """

    cfg: GrokConfig
    """The run's configuration."""
    metrics: pd.DataFrame
    """Per evaluation step: ``step lr train_loss train_acc test_loss test_acc weight_norm embed_gini``."""
    measures: pd.DataFrame
    """Per snapshot: ``step restricted_loss excluded_loss full_loss embed_gini logit_gini weight_norm``."""
    key_freqs: list[int]
    """The key frequencies ``k`` found in the final model's neurons: ``w_k = 2πk/p`` over the token for
    ``+ -``, ``w_k = 2πk/(p-1)`` over its discrete logarithm for ``* /``."""
    embed_norms: list[float]
    """Final embedding norm per frequency (index 0 = constant)."""
    phases: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Phase name → ``(first step, last step)``."""

    @property
    def title(self) -> str:
        return f"Grokking: a {self.cfg.op} b mod {self.cfg.p}"

    def _at(self, col: str, which: int = -1) -> float:
        return float(self.metrics[col].iloc[which]) if col in self.metrics and len(self.metrics) else float("nan")

    def summary(self) -> str:
        c = self.cfg
        lines = [f"{self.title}: train fraction {c.train_frac}, weight decay {c.weight_decay}, lr {c.lr}, "
                 f"{int(self._at('step'))} steps",
                 f"final train acc {self._at('train_acc'):.3f}, test acc {self._at('test_acc'):.3f} "
                 f"(test loss {self._at('test_loss'):.3g})",
                 f"key frequencies{self._basis_note}: {', '.join(map(str, self.key_freqs)) or 'none'}"]
        for name, (a, b) in self.phases.items():
            lines.append(f"{name}: steps {a}-{b}")
        return "\n".join(lines)

    @property
    def _basis_note(self) -> str:
        return f" (over discrete logs, period {self.cfg.p - 1})" if self.cfg.op in ("*", "/") else ""

    def to_frame(self) -> pd.DataFrame:
        m = self.metrics
        s = self.measures.drop(columns=[c for c in self.measures.columns if c in m.columns and c != "step"])
        return m.merge(s, on="step", how="outer").sort_values("step").reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(key_freqs=self.key_freqs, phases={k: list(v) for k, v in self.phases.items()},
                 embed_norms=self.embed_norms, config=self.cfg.__dict__)
        return d

    def plot(self) -> go.Figure:
        from plotly.subplots import make_subplots

        m, s = self.metrics, self.measures
        fig = make_subplots(rows=2, cols=2, subplot_titles=(
            "loss (log scale)", "accuracy", "sparsity and weight norm", "final embedding: norm per frequency"),
            specs=[[{}, {}], [{"secondary_y": True}, {}]], vertical_spacing=0.14)
        for col, colour in (("train_loss", "#2471a3"), ("test_loss", "#c0392b")):
            if col in m:
                fig.add_trace(go.Scatter(x=m.step, y=m[col], name=col, line={"color": colour}), 1, 1)
        for col, colour in (("restricted_loss", "#27ae60"), ("excluded_loss", "#8e44ad")):
            if col in s:
                fig.add_trace(go.Scatter(x=s.step, y=s[col], name=col, line={"color": colour, "dash": "dot"}), 1, 1)
        for col, colour in (("train_acc", "#2471a3"), ("test_acc", "#c0392b")):
            if col in m:
                fig.add_trace(go.Scatter(x=m.step, y=m[col], name=col, line={"color": colour},
                                         showlegend=False), 1, 2)
        for col, colour in (("embed_gini", "#d35400"), ("logit_gini", "#16a085")):
            src = s if col in s else m
            if col in src:
                fig.add_trace(go.Scatter(x=src.step, y=src[col], name=col, line={"color": colour}), 2, 1)
        if "weight_norm" in m:
            fig.add_trace(go.Scatter(x=m.step, y=m.weight_norm, name="weight_norm", line={"color": "#7f8c8d"}),
                          2, 1, secondary_y=True)
        norms = self.embed_norms
        fig.add_trace(go.Bar(x=list(range(len(norms))), y=norms, name="embedding norm",
                             marker_color=["#c0392b" if k in self.key_freqs else "#95a5a6" for k in range(len(norms))],
                             showlegend=False), 2, 2)
        for name, (a, b) in self.phases.items():
            for r, c in ((1, 1), (1, 2), (2, 1)):
                fig.add_vrect(x0=a, x1=b, fillcolor=PHASE_COLOURS.get(name, "rgba(0,0,0,0.05)"), line_width=0,
                              row=r, col=c)
            fig.add_annotation(x=(a + b) / 2, y=1.0, yref="y2 domain", xref="x2", text=name, showarrow=False,
                               font={"size": 10})
        fig.update_yaxes(type="log", row=1, col=1)
        fig.update_xaxes(title_text="step", row=1, col=1)
        fig.update_xaxes(title_text="step", row=1, col=2)
        fig.update_xaxes(title_text="step", row=2, col=1)
        fig.update_xaxes(title_text=f"frequency k{self._basis_note} (red: key)", row=2, col=2)
        fig.update_yaxes(title_text="Gini", row=2, col=1)
        fig.update_yaxes(title_text="weight norm", row=2, col=1, secondary_y=True)
        fig.update_layout(title=self.title, height=750)
        return fig
