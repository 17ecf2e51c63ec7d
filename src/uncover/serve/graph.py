"""The attribution graph (the ``graph`` operation's result) for the workbench's interactive node-link view.

:func:`graph_view` sends the nodes and links of the graph pruned at any node and edge threshold: the graph's own
masks at the thresholds it was built with, else :func:`uncover.graphs.prune.prune` rerun on its stored adjacency
(the same rule and logit weights as :func:`uncover.graphs.attribute.attribution_graph`, so the view at other
thresholds is the graph that building it with those thresholds gives). The page draws it, lets the user move
the thresholds, and group nodes into supernodes by hand (kept in circuit-tracer's ``[name, node_id, ...]`` form).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

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


def graph_masks(g: AttributionGraph, node_threshold: float, edge_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(node_mask [n], edge_mask [n, n])`` of ``g`` pruned at these shares of the influence.

    >>> import uncover as uc
    >>> g = uc.run("graph", model, prompt="The capital of France is", target=" Paris", quick_layers=[3],
    ...            quick_steps=10, max_feature_nodes=16)
    >>> nodes, edges = graph_masks(g, g.node_threshold, g.edge_threshold)
    >>> torch.equal(nodes, g.node_mask), torch.equal(edges, g.edge_mask)
    (True, True)
    """
    from uncover.graphs.prune import prune

    if (node_threshold, edge_threshold) == (g.node_threshold, g.edge_threshold):
        return g.node_mask, g.edge_mask
    n, n_t = len(g.adjacency), len(g.targets)
    weights = torch.zeros(n)
    weights[n - n_t :] = torch.tensor(g.target_probs)  # the logit nodes, weighed by their probability
    nodes, edges, _ = prune(g.adjacency, weights, g.n_features, g.n_pos + n_t, node_threshold, edge_threshold)
    return nodes, edges


def graph_view(
    g: AttributionGraph, node_threshold: Any = None, edge_threshold: Any = None, max_links: int = MAX_LINKS
) -> dict[str, Any]:
    """The pruned graph for the page: nodes (id, kind, layer, position, label, influence, activation) and links
    ``[source id, target id, weight]``, strongest first (at most ``max_links``).

    ``node_threshold``/``edge_threshold``: shares in (0, 1] (default: the graph's own).
    """
    nt = _share(node_threshold, g.node_threshold, "node_threshold")
    et = _share(edge_threshold, g.edge_threshold, "edge_threshold")
    node_mask, edge_mask = graph_masks(g, nt, et)
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
