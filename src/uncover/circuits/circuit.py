"""The :class:`Circuit` result: a set of kept edges of the circuit graph, with their scores.

A circuit keeps the graph (:class:`~uncover.circuits.graph.Graph`), a score for every
edge (EAP's attribution, or ACDC's measured effect) and which edges are kept. It prunes
by count (:meth:`Circuit.top`) or by score (:meth:`Circuit.threshold`), lists its edges and
nodes, plots the graph with layers on the x axis, and saves to / loads from JSON
(:meth:`Circuit.save_json`, :meth:`Circuit.load`), all scores included so a loaded circuit
can be pruned again; :meth:`Circuit.save` writes that JSON for a ``.json`` name and the lossless
result file otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from uncover.circuits.graph import Graph
from uncover.core.errors import UncoverError
from uncover.core.results import Result

if TYPE_CHECKING:
    import plotly.graph_objects as go


@dataclass
class Circuit(Result):
    """Kept edges of a graph, with scores.

    Attributes:
        graph: the model's circuit graph.
        scores: ``[n_senders, n_receivers]`` score of each edge (0 where no edge exists).
        kept: ``[n_senders, n_receivers]`` bool, the edges in the circuit.
        method: how the scores were made (``eap``, ``eap-ig``, ``acdc``).
        metric: the metric they refer to.
        meta: model name, number of prompts, steps, threshold ...

    >>> g = Graph(2, 2, 1)
    >>> c = Circuit(g, torch.arange(g.n_senders * g.n_receivers, dtype=torch.float).view(g.n_senders, -1)
    ...             * g.valid, g.valid.clone(), "demo", "logit_diff")
    >>> c.top(3).edges()[0]
    ('MLP1', 'logits', 76.0)
    """

    graph: Graph
    scores: torch.Tensor
    kept: torch.Tensor
    method: str
    metric: str
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- pruning -------------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return int(self.kept.sum())

    def _with(self, kept: torch.Tensor, **meta: Any) -> Circuit:
        return Circuit(self.graph, self.scores, kept & self.graph.valid, self.method, self.metric,
                       {**self.meta, **meta})

    def top(self, n: int) -> Circuit:
        """The ``n`` edges (among the kept ones) with the largest ``|score|``."""
        if n < 0:
            raise UncoverError(f"number of edges must be ≥ 0 (got {n})")
        flat = torch.where(self.kept, self.scores.abs(), torch.full_like(self.scores, -1.0)).flatten()
        n = min(n, self.n_edges)
        kept = torch.zeros_like(flat, dtype=torch.bool)
        kept[flat.topk(n).indices] = True
        return self._with(kept.view_as(self.kept), pruned=f"top {n}")

    def threshold(self, t: float) -> Circuit:
        """The kept edges with ``|score| ≥ t``."""
        return self._with(self.kept & (self.scores.abs() >= t), pruned=f"|score| >= {t:g}")

    def removed(self) -> torch.Tensor:
        """``[n_senders, n_receivers]`` bool: edges of the graph outside the circuit."""
        return self.graph.valid & ~self.kept

    # ---- views ---------------------------------------------------------------------------
    def edges(self) -> list[tuple[str, str, float]]:
        """Kept edges ``(sender, receiver, score)``, largest ``|score|`` first."""
        u, r = self.kept.nonzero(as_tuple=True)
        s = self.scores[u, r]
        order = s.abs().argsort(descending=True, stable=True)
        g = self.graph
        return [(g.senders[int(u[i])], g.receivers[int(r[i])], float(s[i])) for i in order]

    def node_scores(self) -> dict[str, float]:
        """Each node of the circuit with the summed ``|score|`` of its kept edges (in and out), largest first."""
        g = self.graph
        a = torch.where(self.kept, self.scores.abs(), torch.zeros_like(self.scores))
        out: dict[str, float] = {}
        for u, v in enumerate(a.sum(1).tolist()):
            if v > 0 or self.kept[u].any():
                out[g.senders[u]] = out.get(g.senders[u], 0.0) + v
        for r, v in enumerate(a.sum(0).tolist()):
            if v > 0 or self.kept[:, r].any():
                node = g.receiver_node(r)
                out[node] = out.get(node, 0.0) + v
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def nodes(self) -> list[str]:
        """Nodes touched by a kept edge, most important first."""
        return list(self.node_scores())

    @property
    def title(self) -> str:
        return f"Circuit ({self.method}, {self.metric}): {self.n_edges} of {self.graph.n_edges} edges"

    def summary(self) -> str:
        e = self.edges()[:8]
        nodes = list(self.node_scores().items())[:10]
        faith = self.meta.get("faithfulness")
        how = self.meta.get("ablation", "corrupt")
        extra = f"\nfaithfulness ({how} ablation): {faith:.3f}" if faith is not None else ""
        return (
            f"{self.title}, {len(self.node_scores())} nodes\n"
            "top edges: " + ", ".join(f"{a}→{b} {s:+.3g}" for a, b, s in e) + "\n"
            "top nodes: " + ", ".join(f"{n} {v:.3g}" for n, v in nodes) + extra
        )

    def to_frame(self) -> pd.DataFrame:
        g = self.graph
        s_layer, r_layer = g.sender_layer.tolist(), g.receiver_layer.tolist()
        rows = []
        for rank, (a, b, s) in enumerate(self.edges()):
            rows.append({"rank": rank, "sender": a, "receiver": b, "score": s,
                         "sender_layer": s_layer[g.senders.index(a)], "receiver_layer": r_layer[g.receivers.index(b)]})
        return pd.DataFrame(rows, columns=["rank", "sender", "receiver", "score", "sender_layer", "receiver_layer"])

    def plot(self, max_edges: int = 300) -> go.Figure:
        """The circuit drawn with layers on the x axis and heads on the y axis (the ``max_edges`` strongest edges)."""
        from uncover.circuits.figures import circuit_figure

        return circuit_figure(self, max_edges)

    # ---- JSON ----------------------------------------------------------------------------
    def to_dict(self, all_scores: bool = False) -> dict[str, Any]:
        """JSON-ready dict: the base fields plus the graph, method, metric, meta and the kept edges
        (sender/receiver indices and scores); ``all_scores`` adds every valid edge's score in
        :attr:`Graph.valid` order, so that a loaded circuit can be pruned again."""
        d = super().to_dict()
        u, r = self.kept.nonzero(as_tuple=True)
        d.update(graph=self.graph.to_dict(), method=self.method, metric=self.metric, meta=self.meta,
                 kept=[[int(a), int(b)] for a, b in zip(u, r)],
                 kept_scores=[float(x) for x in self.scores[u, r].tolist()])
        if all_scores:
            d["scores"] = [float(x) for x in self.scores[self.graph.valid].tolist()]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Circuit:
        """Inverse of :meth:`to_dict` (scores of edges outside the circuit are 0 unless saved)."""
        if d.get("kind") != "Circuit" or "graph" not in d:
            raise UncoverError("not a saved circuit (expected kind 'Circuit' with a graph)")
        g = Graph(**d["graph"])
        scores = torch.zeros(g.n_senders, g.n_receivers)
        kept = torch.zeros_like(scores, dtype=torch.bool)
        if "scores" in d:
            scores[g.valid] = torch.tensor(d["scores"], dtype=torch.float32)
        if d["kept"]:
            idx = torch.tensor(d["kept"])
            kept[idx[:, 0], idx[:, 1]] = True
            scores[idx[:, 0], idx[:, 1]] = torch.tensor(d["kept_scores"], dtype=torch.float32)
        return cls(g, scores, kept & g.valid, d["method"], d["metric"], d.get("meta", {}))

    def save(self, path: str | Path) -> Path:
        """Save to ``path``: the JSON of :meth:`save_json` when the name ends in ``.json``, else the lossless
        result file of :meth:`Result.save` (for ``uncover.load_result``, ``rerun`` and ``compare``).
        :meth:`load` reads both."""
        if Path(path).suffix.lower() == ".json":
            return self.save_json(path)
        return super().save(path)

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` with every edge's score as JSON (readable by :meth:`load` and other tools)."""
        Path(path).write_text(json.dumps(self.to_dict(all_scores=True)), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        """Read a circuit written by :meth:`save` (JSON or a result file)."""
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise UncoverError(f"cannot read circuit {path}: {e}") from None
        if raw[8:9] == b"{" and int.from_bytes(raw[:8], "little") <= len(raw) - 8:  # a safetensors header
            from uncover.core.persist import load_result

            c = load_result(path)
            if not isinstance(c, Circuit):
                raise UncoverError(f"{path} holds a {type(c).__name__}, not a circuit")
            return c
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UncoverError(f"cannot read circuit {path}: {e}") from None
        return cls.from_dict(d)
