"""Faithfulness of a circuit (Wang et al. 2023; Conmy et al. 2023; Hanna et al. 2024).

The circuit's metric is measured with every edge *outside* it ablated (its sender's
output replaced, for that receiver only, by the corrupt-run output or by the mean over
the clean prompts; :class:`~uncover.circuits.patch.EdgePatcher`). Faithfulness is that
metric as a fraction of the full model's; the normalised form
``(circuit − empty) / (full − empty)`` also subtracts the empty circuit (every edge
ablated: the corrupt run under corrupt ablation). :func:`faithfulness_curve` measures
circuits of growing size (the top-n edges by ``|score|``) in batched runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from uncover.circuits.patch import EdgePatcher
from uncover.circuits.prompts import Prompts, metric_values
from uncover.core.results import Result

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.circuits.circuit import Circuit
    from uncover.hooks.hooked import HookedModel

COUNTS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


@dataclass
class FaithfulnessCurve(Result):
    """Metric of top-n circuits against n.

    Attributes:
        counts: number of edges kept, per point.
        values: mean metric of each circuit, with every other edge ablated.
        full, empty: mean metric of the full model and of the empty circuit.
        metric, ablation, method: what was measured, how edges were removed, how they were ranked.
        n_graph_edges: edges of the whole graph.
    """

    counts: list[int]
    values: list[float]
    full: float
    empty: float
    metric: str
    ablation: str
    method: str
    n_graph_edges: int

    @property
    def fraction(self) -> list[float]:
        """``circuit / full``."""
        return [v / self.full for v in self.values]

    @property
    def normalised(self) -> list[float]:
        """``(circuit − empty) / (full − empty)``."""
        span = self.full - self.empty
        return [(v - self.empty) / span if span else float("nan") for v in self.values]

    @property
    def title(self) -> str:
        return f"Faithfulness of {self.method} circuits ({self.metric}, {self.ablation} ablation)"

    def summary(self) -> str:
        pts = ", ".join(f"{n}: {f:.2f}" for n, f in zip(self.counts, self.fraction))
        return (f"{self.title}; full model {self.full:.3f}, empty circuit {self.empty:.3f} "
                f"(of {self.n_graph_edges} edges); circuit/full at n edges: {pts}")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"edges": self.counts, "metric": self.values, "fraction": self.fraction,
                             "normalised": self.normalised})

    def plot(self) -> go.Figure:
        from uncover.circuits.figures import faithfulness_figure

        return faithfulness_figure(self)


def circuit_metrics(
    patcher: EdgePatcher, circuits: Sequence[Circuit], metric: str = "logit_diff"
) -> list[float]:
    """Mean metric of each circuit with the edges outside it ablated (one batched run for all).

    >>> from uncover.circuits.eap import eap
    >>> c = eap(model, prompts)  # prompts: 4 IOI pairs; the metric is the mean logit difference
    >>> [round(v, 1) for v in circuit_metrics(EdgePatcher(model, prompts), [c.top(100), c.top(500)])]  # doctest: +SKIP
    [0.4, 2.5]
    """
    removed = torch.stack([c.removed() for c in circuits]).to(patcher.model.device)
    logits = patcher.run(removed)  # [variant, prompt, d_vocab]
    ref = patcher.clean_logits if metric == "kl" else None
    vals = metric_values(metric, logits.flatten(0, 1), patcher.prompts, ref).view(len(circuits), -1)
    return vals.mean(1).tolist()


def faithfulness(
    model: HookedModel, circuit: Circuit, prompts: Prompts, *, ablation: str = "corrupt",
    metric: str | None = None,
) -> float:
    """``metric(circuit) / metric(full model)``, every edge outside the circuit ablated.

    >>> from uncover.circuits.eap import eap
    >>> round(faithfulness(model, eap(model, prompts).top(200), prompts), 1)  # plain EAP, 200 edges: not enough
    -0.2
    """
    metric = metric or circuit.metric
    patcher = EdgePatcher(model, prompts, ablation)
    full = circuit._with(circuit.graph.valid.clone())
    value, ref = circuit_metrics(patcher, [circuit, full], metric)
    return value / ref


def faithfulness_curve(
    model: HookedModel, circuit: Circuit, prompts: Prompts, counts: Sequence[int] = COUNTS, *,
    ablation: str = "corrupt", metric: str | None = None, patcher: EdgePatcher | None = None,
) -> FaithfulnessCurve:
    """Faithfulness of ``circuit.top(n)`` for each ``n`` in ``counts`` (plus the full and empty circuits).

    >>> from uncover.circuits.eap import eap
    >>> curve = faithfulness_curve(model, eap(model, prompts), prompts, [50, 100, 200])  # doctest: +SKIP
    >>> [round(f, 1) for f in curve.fraction]  # plain EAP, 4 prompts: not faithful yet  # doctest: +SKIP
    [-0.4, 0.1, -0.2]
    """
    metric = metric or circuit.metric
    patcher = patcher or EdgePatcher(model, prompts, ablation)
    counts = sorted({min(int(n), circuit.graph.n_edges) for n in counts})
    base = circuit._with(circuit.graph.valid.clone())
    variants = [base.top(n) for n in counts] + [base, base.top(0)]
    vals = circuit_metrics(patcher, variants, metric)
    return FaithfulnessCurve(counts, vals[:-2], vals[-2], vals[-1], metric, patcher.ablation, circuit.method,
                             circuit.graph.n_edges)
