"""``MemorizationResult``: memorization over training and by duplicate count, and membership
inference (Tirumala et al. 2022; Carlini et al. 2021, 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.graph_objects as go

from uncover.core.results import Result
from uncover.dynamics.memorization.localize import LocalizationResult
from uncover.dynamics.memorization.metrics import auroc, membership_scores

if TYPE_CHECKING:
    from uncover.dynamics.memorization.train import MemRun


@dataclass
class MemorizationResult(Result):
    """Memorization of each tracked group over training and membership-inference AUROCs.

    >>> h = pd.DataFrame({"step": [0, 10, 10], "kind": ["canary", "canary", "corpus"], "dups": [4, 4, 0],
    ...                   "n": [2, 2, 2], "loss": [5.0, 1.0, 3.0], "token_mem": [0.1, 0.9, 0.3],
    ...                   "extractable": [0.0, 1.0, 0.0]})
    >>> r = MemorizationResult(h, pd.DataFrame({"attack": ["loss"], "members": ["corpus x1"], "auroc": [0.7]}), {})
    >>> r.to_frame()[["kind", "dups", "extractable"]].values.tolist()
    [['canary', 4, 1.0], ['corpus', 0, 0.0]]
    """

    history: pd.DataFrame
    """Per step and group (``kind``: canary / corpus / member; ``dups``: copies in training, 0 = unseen):
    ``n loss token_mem extractable``."""
    membership: pd.DataFrame
    """Membership inference: ``attack`` (loss / zlib), ``members`` (the positive group), ``auroc``."""
    config: dict[str, Any]
    """The run's configuration."""

    @property
    def title(self) -> str:
        return "Memorization vs duplication"

    def final(self) -> pd.DataFrame:
        """The last measurement of each group."""
        h = self.history
        return h[h.step == h.step.max()].drop(columns="step").reset_index(drop=True)

    def to_frame(self) -> pd.DataFrame:
        return self.final()

    def summary(self) -> str:
        f = self.final()
        lines = [f"{self.title} after {int(self.history.step.max())} steps "
                 f"(k-extractable with k = {self.config.get('k_prefix', '?')}):"]
        for r in f.itertuples():
            lines.append(f"  {r.kind:7s} x{r.dups:<3d} n={r.n:<3d} extractable {r.extractable:.2f}  "
                         f"token memorization {r.token_mem:.2f}  loss {r.loss:.2f}")
        for r in self.membership.itertuples():
            lines.append(f"  membership AUROC ({r.attack}) {r.members}: {r.auroc:.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(membership=self.membership.to_dict("records"), config=self.config,
                 history=self.history.to_dict("records"))
        return d

    def plot(self) -> go.Figure:
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=3, subplot_titles=(
            "per-token memorization over training", "k-extractable fraction by copies", "membership AUROC"))
        for (kind, dups), g in self.history.groupby(["kind", "dups"]):
            fig.add_trace(go.Scatter(x=g.step, y=g.token_mem, name=f"{kind} x{dups}", mode="lines"), 1, 1)
        f = self.final()
        for kind in ("canary", "corpus"):
            g = f[f.kind == kind]
            fig.add_trace(go.Bar(x=[str(d) for d in g.dups], y=g.extractable, name=f"{kind} extractable"), 1, 2)
        m = self.membership
        fig.add_trace(go.Bar(x=[f"{a}: {b}" for a, b in zip(m.attack, m.members)], y=m.auroc, name="AUROC",
                             showlegend=False), 1, 3)
        fig.update_xaxes(title_text="step", row=1, col=1)
        fig.update_xaxes(title_text="copies in training", row=1, col=2)
        fig.update_layout(title=self.title, height=480, barmode="group")
        return fig


def membership_table(run: MemRun) -> pd.DataFrame:
    """AUROC of the loss and zlib attacks: single-copy members vs held-out corpus, and inserted
    canaries (by copies) vs never-inserted canaries."""
    d, model = run.data, run.model
    rows = []
    pairs = [("corpus x1", d.group("member", 1), d.group("corpus", 0))]
    pairs += [(f"canary x{c}", d.group("canary", c), d.group("canary", 0)) for c in run.cfg.dup_counts]
    for label, pos, neg in pairs:
        sp, sn = membership_scores(model, pos), membership_scores(model, neg)
        for attack in ("loss", "zlib"):
            rows.append({"attack": attack, "members": label, "auroc": auroc(sp[attack], sn[attack]),
                         "n_members": len(pos), "n_nonmembers": len(neg)})
    return pd.DataFrame(rows)


def memorization_report(run: MemRun) -> MemorizationResult:
    """The :class:`MemorizationResult` of a finished run."""
    return MemorizationResult(run.history, membership_table(run), run.cfg.__dict__)


@dataclass
class MemorizationTraining(Result):
    """What the ``memorization train`` operation returns: the run's memorization report and, with
    ``--localize``, where in the model the memorized sequences live.

    Without a localization it shows the :class:`MemorizationResult` itself (title, summary, table,
    figure, JSON); with one, the text holds both summaries, the JSON is
    ``{"memorization": ..., "localization": ...}`` and the HTML page has a section for each.

    >>> h = pd.DataFrame({"step": [0], "kind": ["canary"], "dups": [4], "n": [2], "loss": [5.0],
    ...                   "token_mem": [0.1], "extractable": [0.0]})
    >>> r = MemorizationTraining(MemorizationResult(h, pd.DataFrame(columns=["attack", "members", "auroc"]), {}))
    >>> r.to_dict()["kind"]
    'MemorizationResult'
    """

    memorization: MemorizationResult
    """Memorization over training and by copies, and membership-inference AUROCs."""
    localization: LocalizationResult | None = None
    """Per-layer attribution and the ablation check (only with ``--localize``)."""

    @property
    def title(self) -> str:
        return self.memorization.title

    def summary(self) -> str:
        parts = [self.memorization.summary()]
        if self.localization is not None:
            parts.append(self.localization.summary())
        return "\n".join(parts)

    def to_frame(self) -> pd.DataFrame:
        return self.memorization.to_frame()

    def plot(self) -> go.Figure:
        return self.memorization.plot()

    def to_dict(self) -> dict[str, Any]:
        if self.localization is None:
            d = self.memorization.to_dict()
        else:
            d = {"memorization": self.memorization.to_dict(), "localization": self.localization.to_dict()}
        if self.provenance is not None:
            d["provenance"] = self.provenance.to_dict()
        return d

    def to_html(self, path: str | Path | None = None) -> str:
        if self.localization is None:
            return super().to_html(path)
        from uncover.core.html import render_results
        from uncover.core.persist import atomic_write

        page = render_results("Memorization", [self.memorization, self.localization])
        if path is not None:
            atomic_write(Path(path), lambda tmp: tmp.write_text(page, encoding="utf-8"))
        return page
