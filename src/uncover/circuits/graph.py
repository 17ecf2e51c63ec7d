"""The computational graph of a transformer at the granularity of circuit discovery.

Nodes (Conmy et al. 2023; Syed et al. 2023): the input (token embeddings), every
attention head, every MLP and the logits. A *sender* writes into the residual stream
(input, heads, MLPs); a *receiver* reads from it: each head's query input, the key and
value inputs of each key/value head (with grouped-query attention a key/value input is
shared by the query heads of its group, so the KV head is the honest unit), each MLP's
input and the final residual that the logits read. There is an edge from every sender to
every receiver that reads the residual stream after the sender has written to it.

Senders and receivers have *stages*: heads of layer ``l`` write at stage ``2l``, its MLP
at ``2l + 1`` (``2l`` with the parallel attention+MLP residual of GPT-NeoX, whose MLP reads
the same residual as the attention); attention receivers read at ``2l``, the MLP receiver
at ``2l + 1`` (``2l`` in parallel blocks) and the logits at ``2 * n_layers``. An edge is
valid when the sender's stage is smaller than the receiver's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError, UnsupportedModel, did_you_mean
from uncover.core.names import head_label, input_label, kv_head_label, mlp_label

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class Graph:
    """Senders, receivers and valid edges of one model shape.

    >>> g = Graph(n_layers=30, n_heads=9, n_kv_heads=3)
    >>> g.n_senders, g.n_receivers, g.n_edges
    (301, 481, 70651)
    >>> g.senders[:3], g.receivers[9:12]
    (['input', 'L0H0', 'L0H1'], ['L0KV0.k', 'L0KV1.k', 'L0KV2.k'])
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: bool = False
    """Attention and MLP of a block read the same residual (GPT-NeoX ``use_parallel_residual``)."""
    senders: list[str] = field(init=False, compare=False, repr=False)
    receivers: list[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise UncoverError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        kv = kv_head_label if self.n_kv_heads != self.n_heads else head_label
        senders, receivers = ["input"], []
        for layer in range(self.n_layers):
            senders += [head_label(layer, h) for h in range(self.n_heads)] + [mlp_label(layer)]
            receivers += [input_label(head_label(layer, h), "q") for h in range(self.n_heads)]
            receivers += [input_label(kv(layer, g), "k") for g in range(self.n_kv_heads)]
            receivers += [input_label(kv(layer, g), "v") for g in range(self.n_kv_heads)]
            receivers.append(mlp_label(layer))
        receivers.append("logits")
        object.__setattr__(self, "senders", senders)
        object.__setattr__(self, "receivers", receivers)

    @classmethod
    def from_model(cls, model: HookedModel) -> Graph:
        """The graph of ``model``; refuses families whose per-head outputs do not add up in the residual.

        Gemma 2/3 normalise the *sum* of the heads (post-attention norm) before it joins the
        residual stream, so a single head's contribution to a receiver is not defined.
        """
        c = model.cfg
        if model.adapter.family.attn_post_norm is not None:
            raise UnsupportedModel(
                f"edge-level circuits need per-head outputs that add up in the residual stream, but {c.family} "
                "normalises the sum of the heads after attention, so one head's contribution is not defined; "
                "use activation or path patching (supported families: those without a post-attention norm)"
            )
        return cls(c.n_layers, c.n_heads, c.n_kv_heads, c.parallel_attn_mlp)

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def n_senders(self) -> int:
        return len(self.senders)

    @property
    def n_receivers(self) -> int:
        return len(self.receivers)

    @property
    def per_layer_receivers(self) -> int:
        """Receivers in one block: query heads, key and value heads, the MLP."""
        return self.n_heads + 2 * self.n_kv_heads + 1

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    # ---- stages and layers ---------------------------------------------------------------
    @property
    def sender_stage(self) -> torch.Tensor:
        """``[n_senders]`` when each sender writes (input −1, heads 2l, MLP 2l+1 or 2l if parallel)."""
        out = [-1]
        for layer in range(self.n_layers):
            out += [2 * layer] * self.n_heads + [2 * layer + (0 if self.parallel else 1)]
        return torch.tensor(out)

    @property
    def receiver_stage(self) -> torch.Tensor:
        """``[n_receivers]`` when each receiver reads (attention 2l, MLP 2l+1 or 2l, logits 2L)."""
        out = []
        for layer in range(self.n_layers):
            out += [2 * layer] * (self.n_heads + 2 * self.n_kv_heads) + [2 * layer + (0 if self.parallel else 1)]
        return torch.tensor(out + [2 * self.n_layers])

    @property
    def sender_layer(self) -> torch.Tensor:
        """``[n_senders]`` block of each sender (−1 for the input)."""
        return torch.tensor([-1] + [layer for layer in range(self.n_layers) for _ in range(self.n_heads + 1)])

    @property
    def receiver_layer(self) -> torch.Tensor:
        """``[n_receivers]`` block of each receiver (``n_layers`` for the logits)."""
        per = self.per_layer_receivers
        return torch.tensor([layer for layer in range(self.n_layers) for _ in range(per)] + [self.n_layers])

    @property
    def valid(self) -> torch.Tensor:
        """``[n_senders, n_receivers]`` bool: the sender writes before the receiver reads."""
        return self.sender_stage[:, None] < self.receiver_stage[None, :]

    # ---- index helpers -------------------------------------------------------------------
    def head_sender(self, layer: int, head: int) -> int:
        """Sender index of head ``head`` of block ``layer``."""
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def layer_receivers(self, layer: int) -> slice:
        """Receiver indices of block ``layer``: q heads, k heads, v heads, MLP (in that order)."""
        per = self.per_layer_receivers
        return slice(layer * per, (layer + 1) * per)

    def sender_index(self, name: str) -> int:
        """Index of a sender name (``input``, ``L3H2``, ``MLP5``); unknown names list close ones."""
        try:
            return self.senders.index(name)
        except ValueError:
            raise UncoverError(did_you_mean(name, self.senders, "sender")) from None

    def receiver_index(self, name: str) -> int:
        """Index of a receiver name (``L3H2.q``, ``L3KV0.k``, ``MLP5``, ``logits``)."""
        try:
            return self.receivers.index(name)
        except ValueError:
            raise UncoverError(did_you_mean(name, self.receivers, "receiver")) from None

    def receiver_node(self, r: int) -> str:
        """The node a receiver belongs to: ``L3H2.q`` → ``L3H2``, ``L3KV0.k`` → ``L3KV0``."""
        return self.receivers[r].split(".")[0]

    def to_dict(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "parallel": self.parallel}


def edge_count(n_layers: int, n_heads: int, n_kv_heads: int, parallel: bool = False) -> int:
    """Number of edges, in closed form (a check on :attr:`Graph.valid`).

    Attention receivers of block ``l`` (``n_heads + 2 n_kv_heads`` of them) each get
    ``1 + l (n_heads + 1)`` edges, the MLP ``1 + l (n_heads + 1) + n_heads`` (without the
    ``n_heads`` when parallel), the logits every sender.

    >>> edge_count(30, 9, 3)
    70651
    """
    per_attn = n_heads + 2 * n_kv_heads
    total = 0
    for layer in range(n_layers):
        before = 1 + layer * (n_heads + 1)
        total += per_attn * before + before + (0 if parallel else n_heads)
    return total + 1 + n_layers * (n_heads + 1)
