"""Plotly figures of circuits (graph drawing) and faithfulness curves."""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go

if TYPE_CHECKING:
    from uncover.circuits.circuit import Circuit
    from uncover.circuits.faithfulness import FaithfulnessCurve


def node_xy(circuit: Circuit, node: str) -> tuple[float, float]:
    """Where a node is drawn: x = layer (MLPs half a layer later), y = head (MLPs above the heads).

    >>> import torch
    >>> from uncover.circuits.circuit import Circuit
    >>> from uncover.circuits.graph import Graph
    >>> g = Graph(2, 4, 2)
    >>> c = Circuit(g, torch.zeros(g.valid.shape), g.valid.clone(), "demo", "logit_diff")
    >>> node_xy(c, "L1H2"), node_xy(c, "MLP0"), node_xy(c, "L1KV1")
    ((1.0, 2.0), (0.5, 4.0), (1.15, 2.5))
    """
    g = circuit.graph
    mid = (g.n_heads - 1) / 2
    if node == "input":
        return -1.0, mid
    if node == "logits":
        return float(g.n_layers), mid
    if node.startswith("MLP"):
        return int(node[3:]) + 0.5, float(g.n_heads)
    layer, rest = node[1:].split("H", 1) if "KV" not in node else node[1:].split("KV", 1)
    if "KV" in node:  # key/value head: the middle of its group of query heads
        size = g.n_heads // g.n_kv_heads
        return int(layer) + 0.15, int(rest) * size + (size - 1) / 2
    return float(layer), float(rest)


def circuit_figure(circuit: Circuit, max_edges: int = 300) -> go.Figure:
    """Edges as lines (blue: corrupting the edge raises the metric, red: lowers it), nodes as markers.

    >>> from uncover.circuits.eap import eap
    >>> fig = circuit_figure(eap(model, prompts).top(100))  # fig.show() opens it in a browser
    >>> len(fig.data) > 1
    True
    """
    edges = circuit.edges()[:max_edges]
    fig = go.Figure()
    top = max((abs(s) for _, _, s in edges), default=1.0) or 1.0
    for sign, color, name in ((1, "rgba(36,113,163,{a})", "score > 0"), (-1, "rgba(192,57,43,{a})", "score < 0")):
        legend = True
        for band, (lo, hi) in enumerate(((0.5, 1.01), (0.15, 0.5), (0.0, 0.15))):
            xs: list[float | None] = []
            ys: list[float | None] = []
            for a, b, s in edges:
                if (s > 0) == (sign > 0) and lo <= abs(s) / top < hi:
                    (x0, y0), (x1, y1) = node_xy(circuit, a), node_xy(circuit, b.split(".")[0])
                    xs += [x0, x1, None]
                    ys += [y0, y1, None]
            if xs:
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", name=name,
                                         showlegend=legend,
                                         line={"width": (3.5, 1.8, 0.8)[band],
                                               "color": color.format(a=(0.9, 0.6, 0.35)[band])}))
                legend = False
    ns = circuit.node_scores()
    if ns:
        names = list(ns)
        xy = [node_xy(circuit, n) for n in names]
        big = max(ns.values()) or 1.0
        fig.add_trace(go.Scatter(
            x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers+text", name="nodes",
            text=[n if ns[n] >= 0.2 * big else "" for n in names], textposition="top center",
            marker={"size": [6 + 18 * (ns[n] / big) ** 0.5 for n in names], "color": "#34495e"},
            hovertext=[f"{n}: Σ|score| {ns[n]:.3g}" for n in names], hoverinfo="text"))
    g = circuit.graph
    fig.update_layout(
        title=f"{circuit.title} (strongest {len(edges)} drawn)", xaxis_title="layer (input at −1, logits at the end)",
        yaxis={"title": "head (MLP on top)", "tickvals": list(range(g.n_heads)) + [g.n_heads],
               "ticktext": [str(h) for h in range(g.n_heads)] + ["MLP"]},
        height=520, plot_bgcolor="white",
    )
    return fig


def faithfulness_figure(r: FaithfulnessCurve) -> go.Figure:
    """Faithfulness (metric of the circuit / metric of the full model) against edges kept.

    >>> from uncover.circuits.eap import eap
    >>> from uncover.circuits.faithfulness import faithfulness_curve
    >>> fig = faithfulness_figure(faithfulness_curve(model, eap(model, prompts), prompts, [50, 200]))  # doctest: +SKIP
    >>> len(fig.data) > 0  # doctest: +SKIP
    True
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=r.counts, y=r.fraction, mode="lines+markers", name="circuit / full model"))
    fig.add_trace(go.Scatter(x=r.counts, y=r.normalised, mode="lines+markers",
                             name="(circuit − empty) / (full − empty)", line={"dash": "dot"}))
    fig.add_hline(y=1.0, line={"color": "grey", "dash": "dash"})
    fig.update_layout(title=r.title, xaxis={"title": "edges kept", "type": "log"}, yaxis_title="faithfulness",
                      height=420)
    return fig
