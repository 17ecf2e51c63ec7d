"""The attribution graph (the ``graph`` operation's result) for the workbench's interactive node-link view.

:func:`graph_view` sends the nodes and links of the graph pruned at any node and edge threshold: the graph's own
masks at the thresholds it was built with, else :meth:`~uncover.graphs.graph.AttributionGraph.pruned_masks` (the
same rule and logit weights as :func:`uncover.graphs.attribute.attribution_graph`, so the view at other
thresholds is the graph that building it with those thresholds gives). The page draws it, lets the user move
the thresholds, and group nodes into supernodes by hand (kept in circuit-tracer's ``[name, node_id, ...]`` form).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from uncover.core.errors import UsageError

if TYPE_CHECKING:
    from uncover.graphs.graph import AttributionGraph

#: links sent to the page, strongest first (the pruned graph of a long prompt can hold thousands)
MAX_LINKS = 1500


def _share(value: Any, default: float, name: str) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0 < value <= 1:
        raise UsageError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def graph_view(
    g: AttributionGraph, node_threshold: Any = None, edge_threshold: Any = None, max_links: int = MAX_LINKS
) -> dict[str, Any]:
    """The pruned graph for the page: nodes (id, kind, layer, position, label, influence, activation) and links
    ``[source id, target id, weight]``, strongest first (at most ``max_links``).

    ``node_threshold``/``edge_threshold``: shares in (0, 1] (default: the graph's own).
    """
    nt = _share(node_threshold, g.node_threshold, "node_threshold")
    et = _share(edge_threshold, g.edge_threshold, "edge_threshold")
    node_mask, edge_mask = g.pruned_masks(nt, et)
    kept = node_mask.nonzero().flatten().tolist()
    info = {i: g.node(i) for i in kept}
    nodes = [
        {
            "id": d["node_id"],
            "kind": d["kind"],
            "layer": d["layer"],
            "pos": d["pos"],
            "label": d["label"],
            "feature": d["feature"],
            "influence": round(float(g.influence[i]), 6),
            "activation": round(d["activation"], 6),
        }
        for i, d in info.items()
    ]
    t, s = edge_mask.nonzero(as_tuple=True)
    w = g.adjacency[t, s]
    order = w.abs().argsort(descending=True).tolist()
    links = [[info[int(s[j])]["node_id"], info[int(t[j])]["node_id"], round(float(w[j]), 6)] for j in order[:max_links]]
    return {
        "type": "graph",
        "tokens": g.tokens,
        "n_layers": g.n_layers,
        "targets": g.targets,
        "node_threshold": nt,
        "edge_threshold": et,
        "nodes": nodes,
        "links": links,
        "n_links": len(order),
        "n_nodes_all": len(g.adjacency),
    }
