"""What the workbench's views show, as JSON: any operation's result for the page.

:func:`result_view`: an operation's result (summary, table, figure, provenance), plus what a dedicated view
needs (a patching grid, a circuit's edges, an attribution graph's nodes and links (:mod:`uncover.serve.graph`),
steered generations, a steered SAE latent, an edit's rows). The views of a model and a prompt live beside it:
:mod:`uncover.serve.prompt` (the prompt explorer), :mod:`uncover.serve.cells` (cells of patching results),
:mod:`uncover.serve.features` (SAE latents per token) and :mod:`uncover.serve.edits` (an edit's generalisation).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from uncover.serve.common import rounded

if TYPE_CHECKING:
    from uncover.core.results import Result

#: table rows sent to the page
MAX_RECORDS = 500
#: circuit edges sent to the page (the slider picks how many to draw)
MAX_EDGES = 300


def result_view(result: Result) -> dict[str, Any]:
    """A result for the page: kind, title, summary, table (first rows), provenance and a dedicated ``view``.

    >>> import uncover
    >>> v = result_view(uncover.run("lens", model, prompt="The Eiffel Tower is in the city of"))
    >>> v["kind"], v["view"]["type"]
    ('LensResult', 'generic')
    """
    try:
        frame = result.to_frame()
        records = json.loads(frame.head(MAX_RECORDS).to_json(orient="records", default_handler=str))
        columns, n = [str(c) for c in frame.columns], len(frame)
    except NotImplementedError:
        records, columns, n = [], [], 0
    prov = result.provenance
    return {
        "kind": type(result).__name__,
        "title": result.title,
        "summary": result.summary(),
        "columns": columns,
        "records": records,
        "n_records": n,
        "provenance": prov.to_dict() if prov is not None else None,
        "view": _special(result),
    }


def _special(result: Result) -> dict[str, Any]:
    from uncover.patching.activation import PatchResult

    kind = type(result).__name__
    if kind == "PathPatchResult":
        return {
            "type": "patch",
            "grid": rounded(result.grid),
            "str_tokens": [],
            "per": "head",
            "hook": "z",
            "first_diff": 0,
            "metric": result.metric,
            "normalised": result.normalised,
            "receivers": result.receivers,
        }
    if kind == "CausalTraceResult":
        return {
            "type": "trace",
            "grids": {k: rounded(g) for k, g in result.grids.items()},
            "str_tokens": result.str_tokens,
            "answer": result.answer,
            "n_prompts": result.n_prompts,
        }
    if isinstance(result, PatchResult):
        return {
            "type": "patch",
            "grid": rounded(result.grid),
            "str_tokens": result.str_tokens,
            "per": result.per,
            "hook": result.hook,
            "first_diff": result.first_diff,
            "metric": result.metric,
            "normalised": result.normalised,
        }
    if kind == "Circuit":
        edges = result.top(min(MAX_EDGES, result.n_edges)).edges()
        return {
            "type": "circuit",
            "edges": [[s, r, round(float(v), 6)] for s, r, v in edges],
            "n_edges": result.n_edges,
            "method": result.method,
            "metric": result.metric,
        }
    if kind == "SteerResult":
        return {
            "type": "steer",
            "prompts": result.prompts,
            "plain": result.plain,
            "steered": result.steered,
            "score_plain": result.score_plain,
            "score_steered": result.score_steered,
            "score_shift": round(result.score_shift, 6),
            "kl": result.kl,
            "neutral_tokens": result.neutral_tokens,
        }
    if kind == "AttributionGraph":
        from uncover.serve.graph import graph_view

        return graph_view(result)
    if kind == "LatentSteerResult":
        return {
            "type": "latent",
            "latent": result.latent,
            "mode": result.mode,
            "scale": result.scale,
            "hook": result.hook,
            "str_tokens": result.str_tokens,
            "activation": rounded(result.activation),
            "shown": [
                [t, i, round(float(b), 5), round(float(a), 5)]
                for t, i, b, a in zip(result.tokens, result.ids, result.probs_before, result.probs_after)
            ],
            "generation_before": result.generation_before,
            "generation_after": result.generation_after,
            "kl": result.kl,
        }
    if kind == "EditReport":
        return {"type": "edit", "rows": json.loads(json.dumps(result.rows, default=str))}
    if kind == "Comparison":
        return {
            "type": "compare",
            "titles": [result.a.title, result.b.title],
            "figures": [json.loads(figure_json(result.a)), json.loads(figure_json(result.b))],
        }
    return {"type": "generic"}


def figure_json(result: Result) -> str:
    """The result's plotly figure as JSON text (``"null"`` when it has none)."""
    try:
        fig = result.plot()
    except NotImplementedError:
        return "null"
    return fig.to_json()
