"""Top-activating contexts: the result of streaming a corpus through a :class:`~uncover.hooks.streaming.StreamingTopK`.

For each unit (an MLP neuron, a residual direction, an SAE latent) the ``k`` token positions
where it fires most, with the activations around them, a uniform sample of all activations and
its firing density; shown as highlighted contexts (the "max-activating examples" of Bricken et
al. 2023, *Towards Monosemanticity*: one coloured span per token, shaded by its activation).
Neuron views (:mod:`uncover.neurons.top`) and SAE feature dashboards (:mod:`uncover.sae.dashboard`)
both return it and show it with :func:`contexts_html`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.html import Section
from uncover.core.results import Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel
    from uncover.hooks.streaming import StreamingTopK


@dataclass
class TopActivations(Result):
    """Top-activating contexts of units at one hook.

    Attributes:
        hook: the hook name.
        units: a label per unit (neuron index or ``dir{i}``).
        values: ``[units, k]`` top activations, descending.
        block, pos: ``[units, k]`` where each one is (row of ``tokens`` and position).
        windows: ``[units, k, before + 1 + after]`` the unit's activations around it.
        tokens: ``[n_blocks, pos]`` the token ids streamed.
        sample: ``[s, units]`` a uniform sample of all activations (for histograms).
        density: ``[units]`` fraction of positions where the unit is > 0.
        mean: ``[units]`` mean activation.
        window: ``(before, after)``.
        strs: token id -> display string, for the ids in the contexts.
    """

    hook: str
    units: list[str]
    values: torch.Tensor
    block: torch.Tensor
    pos: torch.Tensor
    windows: torch.Tensor
    tokens: torch.Tensor
    sample: torch.Tensor
    density: torch.Tensor
    mean: torch.Tensor
    window: tuple[int, int]
    strs: dict[int, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_stream(cls, model: HookedModel, stream: StreamingTopK, hook: str, units: list[str],
                    tokens: torch.Tensor, density: torch.Tensor | None = None,
                    mean: torch.Tensor | None = None) -> TopActivations:
        """The contexts kept by ``stream`` after it saw ``tokens`` ``[n_blocks, pos]`` (in order, whole rows).

        ``density`` and ``mean`` default to the stream's running firing fraction and mean.

        >>> from uncover.hooks.streaming import StreamingTopK
        >>> s = StreamingTopK(k=1, n_units=1, window=(1, 0))
        >>> s.update(torch.tensor([[[0.0], [2.0], [1.0]]]))
        >>> top = TopActivations.from_stream(model, s, "hook_embed", ["u0"], model.to_tokens("The cat sat"))
        >>> top.context(0, 0)
        (['The', ' cat'], [0.0, 2.0], 1)
        """
        p = tokens.shape[1]
        n = max(stream.count, 1)
        ids = sorted(set(tokens.unique().tolist()))
        return cls(hook, units, stream.values.T.contiguous(), (stream.index // p).T.contiguous(),
                   (stream.index % p).T.contiguous(), stream.windows.transpose(0, 1).contiguous(), tokens,
                   stream.sample, stream.positive.float() / n if density is None else density,
                   (stream.total / n).float() if mean is None else mean, stream.window,
                   dict(zip(ids, model._strs(ids))))

    @property
    def title(self) -> str:
        return f"Top-activating contexts at {self.hook}"

    def context(self, unit: int, rank: int) -> tuple[list[str], list[float], int]:
        """``(tokens, activations, index of the top token)`` of one kept context."""
        b, p = int(self.block[unit, rank]), int(self.pos[unit, rank])
        before, after = self.window
        lo, hi = max(0, p - before), min(self.tokens.shape[1], p + after + 1)
        ids = self.tokens[b, lo:hi].tolist()
        acts = self.windows[unit, rank, before - (p - lo) : before + (hi - p)].tolist()
        return [self.strs.get(i, f"<{i}>") for i in ids], acts, p - lo

    def summary(self) -> str:
        lines = [f"{len(self.units)} unit(s) at {self.hook} over {self.tokens.numel()} tokens"]
        for u in range(min(len(self.units), 8)):
            toks, _, m = self.context(u, 0)
            ctx = "".join(toks[:m]) + "[[" + toks[m] + "]]" + "".join(toks[m + 1 :])
            lines.append(f"  {self.units[u]}: max {float(self.values[u, 0]):.3g}, density "
                         f"{float(self.density[u]):.3f}: {ctx!r}")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for u, name in enumerate(self.units):
            for r in range(self.values.shape[1]):
                toks, _, m = self.context(u, r)
                rows.append({"unit": name, "rank": r, "activation": float(self.values[u, r]),
                             "block": int(self.block[u, r]), "pos": int(self.pos[u, r]), "token": toks[m],
                             "context": "".join(toks)})
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        fig = go.Figure()
        for u in range(min(len(self.units), 6)):
            fig.add_trace(go.Histogram(x=self.sample[:, u].tolist(), name=self.units[u], opacity=0.6, nbinsx=60))
        fig.update_layout(barmode="overlay", title=f"Activation histograms at {self.hook} (uniform sample)",
                          xaxis_title="activation", yaxis_title="count", yaxis_type="log")
        return fig

    def contexts_section(self, max_units: int = 20) -> str:
        """HTML: each unit's top contexts with token highlighting."""
        parts = []
        for u in range(min(len(self.units), max_units)):
            rows = []
            for r in range(self.values.shape[1]):
                toks, acts, m = self.context(u, r)
                rows.append((f"#{r}", toks, acts, m, float(self.values[u, r])))
            parts.append(f"<h3>{self.units[u]}</h3>" + contexts_html(rows, float(self.values[u, 0])))
        return "\n".join(parts)

    def html_sections(self) -> list[Any]:
        """The figure and table, then each unit's top contexts with token highlighting."""
        return [Section.from_result(self), Section("Top contexts", self.contexts_section())]


def highlight(tokens: Sequence[str], acts: Sequence[float], scale: float, mark: int | None = None) -> str:
    """Tokens as ``<span>``s shaded red by ``act / scale`` (negative values blue); ``mark`` is underlined.

    >>> highlight(["a", "b"], [0.0, 1.0], 1.0, mark=1).count("<span")
    2
    """
    out = []
    scale = scale if scale > 0 else 1.0
    for i, (t, a) in enumerate(zip(tokens, acts)):
        x = max(-1.0, min(1.0, float(a) / scale))
        color = f"rgba(230,60,40,{x:.2f})" if x >= 0 else f"rgba(40,90,230,{-x:.2f})"
        style = f"background:{color}" + (";border-bottom:2px solid #000;font-weight:600" if i == mark else "")
        text = html.escape(t).replace("\n", "⏎")
        out.append(f'<span title="{float(a):.3g}" style="{style}">{text}</span>')
    return "".join(out)


def contexts_html(rows: Sequence[tuple[str, Sequence[str], Sequence[float], int, float]], scale: float) -> str:
    """A list of highlighted contexts: ``(label, tokens, acts, mark, value)`` per row.

    >>> "<li>" in contexts_html([("n0", ["x"], [1.0], 0, 1.0)], 1.0)
    True
    """
    items = [
        f'<li><span class="meta">{html.escape(label)} · {value:.3g}</span> '
        f'<code style="white-space:pre-wrap">{highlight(toks, acts, scale, mark)}</code></li>'
        for label, toks, acts, mark, value in rows
    ]
    return '<ol style="text-align:left;line-height:1.7">' + "".join(items) + "</ol>"
