"""Token highlighting in HTML: one coloured span per token, shaded by an activation.

Shared by neuron top-activation views and SAE feature dashboards (the "max-activating
examples" presentation of Bricken et al. 2023, *Towards Monosemanticity*).
"""

from __future__ import annotations

import html
from collections.abc import Sequence


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
