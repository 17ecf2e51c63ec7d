"""The attribution-graph result: nodes, edges, pruning masks, circuit-tracer JSON and an interactive page.

Node order (the adjacency's rows and columns): the visited features (by layer, position,
index), the error nodes (``layer * n_pos + pos``, every layer), the token embeddings (one per
position), the target logits. :meth:`AttributionGraph.graph_json` writes the pruned graph in
circuit-tracer's schema (``metadata``/``qParams``/``nodes``/``links``; node ids
``{layer}_{feature}_{pos}`` for features, ``E_{token id}_{pos}`` for embeddings,
``{n_layers + 1}_{token id}_{pos}`` for logits, ``{layer}_error_{pos}`` for error nodes), so
circuit-tracer's and Neuronpedia's viewers can read it; the HTML report shows the graph with
plotly and lets you lasso nodes into named supernodes (exported in the same ``[name, ids...]``
form as ``qParams.supernodes``).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.html import Section
from uncover.core.persist import atomic_write
from uncover.core.results import Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

KINDS = ("feature", "error", "embedding", "logit")


def _cantor(x: int, y: int) -> int:
    """circuit-tracer's integer ``feature`` of a feature node: the Cantor pairing of layer and index.

    >>> _cantor(2, 5)
    33
    """
    return (x + y) * (x + y + 1) // 2 + y
FEATURE_TYPES = {"feature": "cross layer transcoder", "error": "mlp reconstruction error", "embedding": "embedding",
                 "logit": "logit"}


@dataclass
class AttributionGraph(Result):
    """An attribution graph of one prompt (see :func:`uncover.graphs.attribute`).

    Attributes:
        prompt, tokens, token_ids: the prompt and its tokens.
        targets, target_ids, target_probs, target_logits: the target tokens at the last position, their
            probabilities and their logits minus the mean logit (what the edges into them add up to, with the
            biases' contributions).
        feature_layer, feature_pos, feature_index, feature_act: ``[n_features]`` the visited features.
        error_norm: ``[n_layers, pos]`` norms of the error nodes (what the transcoders miss).
        adjacency: ``[n_nodes, n_nodes]`` direct effects, ``[target, source]``, before pruning.
        node_mask, edge_mask: what the pruned graph keeps. influence: ``[n_nodes]`` each node's influence on
            the logits (before pruning).
        node_threshold, edge_threshold: the pruning's shares.
        n_layers: the model's layers. n_active: active features in the prompt (visited or not).
        transcoders, model_name: what made the graph.
        seconds: wall time; backward_passes: target rows computed (one vectorised backward each).
    """

    prompt: str
    tokens: list[str]
    token_ids: list[int]
    targets: list[str]
    target_ids: list[int]
    target_probs: list[float]
    target_logits: list[float]
    feature_layer: torch.Tensor
    feature_pos: torch.Tensor
    feature_index: torch.Tensor
    feature_act: torch.Tensor
    error_norm: torch.Tensor
    adjacency: torch.Tensor
    node_mask: torch.Tensor
    edge_mask: torch.Tensor
    influence: torch.Tensor
    node_threshold: float
    edge_threshold: float
    n_layers: int
    n_active: int
    transcoders: str
    model_name: str
    seconds: float
    backward_passes: int

    # ---- node bookkeeping ----------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return len(self.feature_act)

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    def node(self, i: int) -> dict[str, Any]:
        """Node ``i``: ``kind``, ``layer`` (-1 for embeddings, ``n_layers`` for logits), ``pos``, ``feature``,
        ``activation``, ``node_id`` (circuit-tracer's), ``label``."""
        nf, p, nl = self.n_features, self.n_pos, self.n_layers
        if i < nf:
            la, pos, f = (int(t[i]) for t in (self.feature_layer, self.feature_pos, self.feature_index))
            return {"kind": "feature", "layer": la, "pos": pos, "feature": f, "activation": float(self.feature_act[i]),
                    "node_id": f"{la}_{f}_{pos}", "label": f"L{la} F{f} @{pos}"}
        i -= nf
        if i < nl * p:
            la, pos = divmod(i, p)
            return {"kind": "error", "layer": la, "pos": pos, "feature": None,
                    "activation": float(self.error_norm[la, pos]), "node_id": f"{la}_error_{pos}",
                    "label": f"error L{la} @{pos}"}
        i -= nl * p
        if i < p:
            return {"kind": "embedding", "layer": -1, "pos": i, "feature": None, "activation": 0.0,
                    "node_id": f"E_{self.token_ids[i]}_{i}", "label": f"{self.tokens[i]!r} @{i}"}
        i -= p
        return {"kind": "logit", "layer": nl, "pos": p - 1, "feature": None, "activation": self.target_logits[i],
                "node_id": f"{nl + 1}_{self.target_ids[i]}_{p - 1}",
                "label": f"logit {self.targets[i]!r} (p={self.target_probs[i]:.3f})"}

    def nodes(self, pruned: bool = True) -> list[int]:
        """Indices of the nodes (of the pruned graph by default)."""
        return self.node_mask.nonzero().flatten().tolist() if pruned else list(range(len(self.adjacency)))

    def pruned_masks(self, node_threshold: float, edge_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(node_mask [n], edge_mask [n, n])`` of this graph pruned at other shares of the influence: the rule and
        logit weights :func:`~uncover.graphs.attribute.attribution_graph` prunes with, rerun on the stored adjacency
        (the graph's own masks at the thresholds it was built with).

        >>> import uncover as uc
        >>> g = uc.run("graph", model, prompt="The capital of France is", target=" Paris", quick_layers=[3],
        ...            quick_steps=10, max_feature_nodes=16)
        >>> nodes, edges = g.pruned_masks(g.node_threshold, g.edge_threshold)
        >>> torch.equal(nodes, g.node_mask), int(g.pruned_masks(0.5, 0.5)[0].sum()) <= int(nodes.sum())
        (True, True)
        """
        from uncover.graphs.prune import prune

        if (node_threshold, edge_threshold) == (self.node_threshold, self.edge_threshold):
            return self.node_mask, self.edge_mask
        n, n_t = len(self.adjacency), len(self.targets)
        weights = torch.zeros(n)
        weights[n - n_t :] = torch.tensor(self.target_probs)  # the logit nodes, weighed by their probability
        nodes, edges, _ = prune(self.adjacency, weights, self.n_features, self.n_pos + n_t, node_threshold,
                                edge_threshold)
        return nodes, edges

    def edges(self, pruned: bool = True) -> list[tuple[int, int, float]]:
        """``(source, target, weight)`` of the edges (of the pruned graph by default), strongest first."""
        mask = self.edge_mask if pruned else self.adjacency != 0
        t, s = mask.nonzero(as_tuple=True)
        w = self.adjacency[t, s]
        order = w.abs().argsort(descending=True)
        return [(int(s[j]), int(t[j]), float(w[j])) for j in order]

    def top_features(self, n: int = 10) -> list[dict[str, Any]]:
        """The ``n`` kept features of highest influence, with their direct effect on the first target logit."""
        logit = len(self.adjacency) - len(self.targets)
        feats = [i for i in self.nodes() if i < self.n_features]
        feats.sort(key=lambda i: -float(self.influence[i]))
        return [{**self.node(i), "influence": float(self.influence[i]),
                 "logit_effect": float(self.adjacency[logit, i])} for i in feats[:n]]

    # ---- views ---------------------------------------------------------------------------
    @property
    def title(self) -> str:
        return f"Attribution graph: {self.prompt!r} -> {', '.join(map(repr, self.targets))}"

    def summary(self) -> str:
        kept = self.nodes()
        kinds = [self.node(i)["kind"] for i in kept]
        err_inf = float(self.influence[self.n_features: self.n_features + self.n_layers * self.n_pos].sum())
        feat_inf = float(self.influence[: self.n_features].sum())
        share = err_inf / max(err_inf + feat_inf, 1e-12)
        return (f"{self.title} (p={self.target_probs[0]:.3f}). {self.n_active} active features, "
                f"{self.n_features} visited; pruned graph: {kinds.count('feature')} features, "
                f"{kinds.count('error')} error nodes, {len(self.edges())} edges (node threshold "
                f"{self.node_threshold}, edge threshold {self.edge_threshold}). Error nodes carry {share:.0%} of the "
                f"influence of features and errors. {self.transcoders}; {self.backward_passes} backward rows in "
                f"{self.seconds:.1f} s.")

    def to_frame(self) -> pd.DataFrame:
        """The pruned graph's nodes: id, kind, layer, position, token, feature, activation, influence, logit effect."""
        import pandas as pd

        logit = len(self.adjacency) - len(self.targets)
        rows = []
        for i in self.nodes():
            d = self.node(i)
            rows.append({"node_id": d["node_id"], "kind": d["kind"], "layer": d["layer"], "pos": d["pos"],
                         "token": self.tokens[d["pos"]], "feature": d["feature"], "activation": d["activation"],
                         "influence": float(self.influence[i]), "logit_effect": float(self.adjacency[logit, i])})
        return pd.DataFrame(rows)

    def graph_json(self, slug: str = "uncover-graph") -> dict[str, Any]:
        """The pruned graph in circuit-tracer's JSON schema (for its and Neuronpedia's viewers).

        Each node's fields are those circuit-tracer's ``Node`` factories write (``feature``: the Cantor
        pairing of layer and index for features, -1 for errors, the position for embeddings, the token id for
        logits; its ``jsNodeId`` forms); only error nodes keep the id ``{layer}_error_{pos}``, since
        circuit-tracer's ``0_{layer}_{pos}`` collides with layer-0 feature ids.
        """
        kept = self.nodes()
        nodes = []
        for i in kept:
            d = self.node(i)
            kind = d["kind"]
            j = i - (len(self.adjacency) - len(self.targets))
            la, pos = d["layer"], d["pos"]
            if kind == "feature":
                feature, js = _cantor(la, d["feature"]), f"{la}_{d['feature']}-0"
            elif kind == "error":
                feature, js = -1, f"{la}_{pos}-0"
            elif kind == "embedding":
                feature, js = pos, f"E_{self.token_ids[pos]}-{pos}"
            else:
                feature, js = self.target_ids[j], f"L_{self.target_ids[j]}-{pos}"
            nodes.append({
                "node_id": d["node_id"], "feature": feature,
                "layer": "E" if kind == "embedding" else str(la + (1 if kind == "logit" else 0)),
                "ctx_idx": pos, "feature_type": FEATURE_TYPES[kind], "jsNodeId": js, "clerp": d["label"],
                "influence": float(self.influence[i]), "activation": d["activation"],
                "token_prob": self.target_probs[j] if kind == "logit" else 0.0,
                "is_target_logit": kind == "logit" and j == 0, "run_idx": 0, "reverse_ctx_idx": 0})
        ids = {i: self.node(i)["node_id"] for i in kept}
        links = [{"source": ids[s], "target": ids[t], "weight": w} for s, t, w in self.edges()]
        meta = {"slug": slug, "scan": self.model_name, "transcoder_list": [], "prompt_tokens": self.tokens,
                "prompt": self.prompt, "node_threshold": self.node_threshold, "edge_threshold": self.edge_threshold,
                "schema_version": 1, "info": {"creator_name": "uncover", "transcoders": self.transcoders}}
        return {"metadata": meta, "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                                              "sg_pos": ""}, "nodes": nodes, "links": links}

    def save_json(self, path: str | Path, slug: str = "uncover-graph") -> Path:
        """Write :meth:`graph_json` to ``path``."""
        text = json.dumps(self.graph_json(slug), indent=1)
        atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return Path(path)

    def plot(self) -> go.Figure:
        from uncover.graphs.figures import graph_figure

        return graph_figure(self)

    def html_sections(self) -> list[Section]:
        """The graph (lasso nodes, name them, group them into supernodes), the node table, the provenance."""
        from uncover.graphs.figures import supernode_controls

        fig_html = self.plot().to_html(full_html=False, include_plotlyjs=False, div_id="uc-graph")
        table = self.to_frame().to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)
        parts = [f'<p class="summary">{html.escape(self.summary())}</p>', fig_html, supernode_controls(),
                 f"<details><summary>Nodes of the pruned graph</summary>{table}</details>"]
        if self.provenance is not None:
            lines = "".join(f"<li>{html.escape(line)}</li>" for line in self.provenance.lines())
            parts.append(f'<details class="meta"><summary>Provenance</summary><ul>{lines}</ul></details>')
        return [Section(self.title, "\n".join(parts))]
