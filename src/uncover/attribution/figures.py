"""Plotly figures of direct logit attribution (kept apart so the result class stays small; imported lazily by
its ``plot``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go

if TYPE_CHECKING:
    from uncover.attribution.dla import DLAResult


def dla_figure(r: DLAResult, top: int = 20) -> go.Figure:
    """Bar chart of the largest contributions (mean over prompts) plus a layer × head heatmap.

    >>> import uncover as uc
    >>> r = uc.direct_logit_attribution(model, "The Eiffel Tower is in the city of", " Paris", " Rome")
    >>> len(dla_figure(r, top=5).data[0].y)
    5
    """
    from plotly.subplots import make_subplots

    mean = r.contributions.mean(1)
    order = mean.abs().argsort(descending=True)[:top].tolist()
    labels = [r.labels[i] for i in order]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55],
                        subplot_titles=("largest contributions", "attention heads (layer × head)"))
    fig.add_trace(go.Bar(x=[float(mean[i]) for i in order][::-1], y=labels[::-1], orientation="h",
                         marker_color=["#c0392b" if mean[i] < 0 else "#2471a3" for i in order][::-1],
                         showlegend=False), row=1, col=1)
    heads = r.head_grid()  # [layer, head]
    lim = float(heads.abs().max()) or 1.0
    fig.add_trace(go.Heatmap(z=heads.numpy(), colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
                             colorbar={"title": "logit diff"},
                             hovertemplate="L%{y}H%{x}: %{z:.3f}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(title_text="logit-difference contribution", row=1, col=1)
    fig.update_xaxes(title_text="head", row=1, col=2)
    fig.update_yaxes(title_text="layer", row=1, col=2)
    fig.update_layout(title=r.title, height=max(450, 16 * heads.shape[0]))
    return fig
