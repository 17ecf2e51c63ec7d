"""Plotly figures of the head results (kept apart so the result classes stay small)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go
import torch

from uncover.core.names import head_label

if TYPE_CHECKING:
    from uncover.heads.patterns import AttentionPatterns


def head_heatmap(grid: torch.Tensor, title: str, signed: bool = False, colorbar: str = "score") -> go.Figure:
    """A ``[layer, head]`` heatmap (diverging colours around 0 when ``signed``).

    >>> head_heatmap(torch.rand(3, 4), "scores").data[0].z.shape
    (3, 4)
    """
    z = grid.float().numpy()
    kw = {"colorscale": "Blues", "zmin": 0.0} if not signed else {"colorscale": "RdBu", "zmid": 0.0}
    fig = go.Figure(go.Heatmap(z=z, colorbar={"title": colorbar}, hovertemplate="L%{y}H%{x}: %{z:.3f}<extra></extra>",
                               **kw))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", height=max(400, 18 * grid.shape[0]),
                      xaxis={"dtick": 1})
    return fig


def pattern_figure(r: AttentionPatterns) -> go.Figure:
    """One heatmap per head (query × key, token labels) with a dropdown that selects the head."""
    labels = [f"{i}:{t!r}" for i, t in enumerate(r.str_tokens)]
    fig = go.Figure()
    names = [head_label(layer, head) for layer, head in r.heads]
    for i, name in enumerate(names):
        z = r.patterns[i].float().numpy()
        fig.add_trace(go.Heatmap(z=z, x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1, visible=i == 0,
                                 name=name, colorbar={"title": "attention"},
                                 hovertemplate=f"{name}<br>query %{{y}}<br>key %{{x}}<br>%{{z:.3f}}<extra></extra>"))
    buttons = [{"label": name, "method": "update",
                "args": [{"visible": [j == i for j in range(len(names))]},
                         {"title": f"{r.title}: {name}"}]} for i, name in enumerate(names)]
    n = len(labels)
    fig.update_layout(
        title=f"{r.title}: {names[0]}" if names else r.title,
        updatemenus=[{"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right", "y": 1.12,
                      "yanchor": "top", "showactive": True}] if len(names) > 1 else [],
        xaxis={"title": "key (attended-to) token", "tickangle": -60},
        yaxis={"title": "query token", "autorange": "reversed"},
        height=max(450, 22 * n + 200), width=max(600, 22 * n + 300),
    )
    return fig
