"""The ``graph`` operation: the attribution graph of a prompt for a target token.

``uncover graph "The capital of France is" --target " Paris"`` builds the graph over a
transcoder set (``--transcoders``: a set, CLT, transcoder or training run directory; default
the model's quick set, trained on first use and cached) with :func:`~uncover.graphs.attribute.
attribution_graph`, prunes it by influence and reports it (``--html``: the interactive graph with
supernode grouping; ``--graph-json``: circuit-tracer's JSON for its and Neuronpedia's viewers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uncover.core.config import Config, param
from uncover.graphs.graph import AttributionGraph
from uncover.ops.registry import operation
from uncover.transcoders.ops import QUICK_HELP, check_set_path, load_transcoders

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class GraphConfig(Config):
    """The attribution graph of a prompt for a target token, pruned by influence.

    >>> GraphConfig(prompt="The capital of France is", target=" Paris", node_threshold=1.5)
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: GraphConfig: node_threshold (--node-threshold) must be <= 1, got 1.5
    """

    prompt: str = param(help="The prompt", positional=True, nonempty=True, unit="tokens")
    target: str | None = param(None, help="Target token at the last position (default: the most likely one)",
                               unit="token")
    transcoders: Path | None = param(None, help="Transcoder set, CLT, transcoder or run directory "
                                                "(default: the quick set)", path="in_dir")
    max_feature_nodes: int = param(128, help="Features whose incoming edges are computed (by influence)", ge=1)
    batch_size: int = param(32, help="Targets per vectorised backward pass", ge=1)
    node_threshold: float = param(0.8, help="Share of the influence the pruned graph's nodes keep", gt=0, le=1)
    edge_threshold: float = param(0.98, help="Share of the edge influence the pruned graph keeps", gt=0, le=1)
    graph_json: Path | None = param(None, help="Also write the graph in circuit-tracer's JSON schema here",
                                    path="out")
    quick_layers: list[int] | None = param(None, help=QUICK_HELP, unit="layer", min_items=1)
    quick_steps: int = param(300, help="Training steps of the quick set", ge=1)

    def validate(self) -> None:
        check_set_path(self.transcoders, "GraphConfig")


@operation("graph", GraphConfig, AttributionGraph, long=True,
           example={"prompt": "The capital of France is", "target": " Paris", "quick_layers": [3],
                    "quick_steps": 10, "max_feature_nodes": 16})
def graph(model: HookedModel, cfg: GraphConfig, progress: Progress) -> AttributionGraph:
    """Attribution graph over transcoder features for a prompt and a target token."""
    from uncover.graphs.attribute import attribution_graph

    tset = load_transcoders(model, cfg.transcoders, cfg.quick_layers, cfg.quick_steps, progress)
    g = attribution_graph(model, tset, cfg.prompt, [cfg.target] if cfg.target else None,
                  max_feature_nodes=cfg.max_feature_nodes, batch_size=cfg.batch_size,
                  node_threshold=cfg.node_threshold, edge_threshold=cfg.edge_threshold, progress=progress)
    if cfg.graph_json is not None:
        g.save_json(cfg.graph_json)
        progress.message(f"graph JSON written to {cfg.graph_json.resolve()}")
    return g
