"""Attribution graphs over transcoder features (Ameisen et al. 2025, "Circuit Tracing").

:func:`replacement_pass` runs the local replacement model of a prompt; :func:`attribution_graph` builds
the graph of direct effects between embeddings, features, error nodes and logits and prunes it
by influence; :class:`AttributionGraph` holds it, writes circuit-tracer's JSON and an
interactive page; :func:`feature_effects` checks it against interventions on the real model.
"""

from uncover.graphs.attribute import attribution_graph, edge_rows
from uncover.graphs.graph import AttributionGraph
from uncover.graphs.prune import influence, normalize, prune
from uncover.graphs.replacement import ReplacementPass, replacement_pass

__all__ = [
    "AttributionGraph",
    "ReplacementPass",
    "attribution_graph",
    "edge_rows",
    "influence",
    "normalize",
    "prune",
    "replacement_pass",
]
