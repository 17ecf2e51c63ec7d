"""Plotly figures of pruning results (kept apart so the result classes stay small; imported lazily by ``plot``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


def sparsity_figure(frame: pd.DataFrame, title: str) -> go.Figure:
    """Lines of measured sparsity per layer, one per module name.

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"layer": [0, 1], "module": ["mlp.down_proj"] * 2, "sparsity": [0.5, 0.25]})
    >>> sparsity_figure(frame, "demo").data[0].name
    'mlp.down_proj'
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, part in frame.groupby("module", sort=False):
        fig.add_trace(go.Scatter(x=part["layer"], y=part["sparsity"], mode="lines+markers", name=str(name)))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="fraction of weights that are zero",
                      yaxis_range=[0, 1])
    return fig
