"""Plotly figures of lens results (kept apart so the result class stays small; imported lazily by its ``plot``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go

if TYPE_CHECKING:
    from uncover.lenses.logit_lens import LensResult


def lens_heatmap(r: LensResult, prompt: int = 0) -> go.Figure:
    """Layer × position heatmap of the top-1 probability, annotated with the top token.

    >>> import uncover as uc
    >>> lens_heatmap(uc.logit_lens(model, "The Eiffel Tower is in")).layout.xaxis.title.text
    'position'
    """
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
    """Probability of each target token at the last chosen position, across layers, per prompt.

    >>> import uncover as uc
    >>> r = uc.logit_lens(model, ["The Eiffel Tower is in the city of"], targets=[" Paris", " Rome"])
    >>> [t.name[:8] for t in lens_target_lines(r).data]
    ["' Paris'", "' Rome' "]
    """
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
