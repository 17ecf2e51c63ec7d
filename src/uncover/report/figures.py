"""Plotly figures for results (kept here so result classes stay small)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go

if TYPE_CHECKING:
    from uncover.attribution.dla import DLAResult
    from uncover.lenses.logit_lens import LensResult


def lens_heatmap(r: LensResult, prompt: int = 0) -> go.Figure:
    """Layer × position heatmap of the top-1 probability, annotated with the top token."""
    pos = r.positions[prompt]
    z = r.top_probs[prompt, :, : len(pos), 0].numpy()  # [layer, k_pos]
    text = [[r.top_tokens[prompt][li][k][0] for k in range(len(pos))] for li in range(len(r.layers))]
    x = [f"{p}:{r.str_tokens[prompt][p]!r}" for p in pos]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=x, y=r.layers, text=text, texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1,
            colorbar={"title": "p(top)"},
            hovertemplate="layer %{y}<br>position %{x}<br>top %{text} p=%{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{r.title}: top token after each layer — {r.prompts[prompt]!r}",
        xaxis_title="position", yaxis_title="layer (0 = embeddings)", height=max(400, 18 * len(r.layers)),
    )
    return fig


def lens_target_lines(r: LensResult) -> go.Figure:
    """Probability of each target token at the last chosen position, across layers, per prompt."""
    fig = go.Figure()
    if r.target_probs is None:
        return fig
    for i, p in enumerate(r.prompts):
        k = len(r.positions[i]) - 1
        for j, t in enumerate(r.targets):
            fig.add_trace(go.Scatter(x=r.layers, y=r.target_probs[i, :, k, j].tolist(), mode="lines+markers",
                                     name=f"{t!r} | {p[:30]!r}"))
    fig.update_layout(title=f"{r.title}: target probability by layer", xaxis_title="layer", yaxis_title="probability")
    return fig


def dla_figure(r: DLAResult, top: int = 20) -> go.Figure:
    """Bar chart of the largest contributions (mean over prompts) plus a layer × head heatmap."""
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
