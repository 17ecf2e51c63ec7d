"""FFN layers as key-value memories: what each neuron's value vector writes into the vocabulary.

Geva et al. 2021 ("Transformer Feed-Forward Layers Are Key-Value Memories") and 2022
("... Build Predictions by Promoting Concepts in the Vocabulary Space"): an MLP output is
``sum_i a_i v_i`` where ``v_i`` is row ``i`` of ``W_out`` (``[d_mlp, d_model]``). Reading
``v_i`` through the final norm's gain and the unembedding, ``(v_i * g) @ W_U``, shows which
tokens neuron ``i`` promotes (top) and suppresses (bottom) when it fires positively.
The norm's normalisation (a positive per-position scale) and centring of LayerNorm are
left out, as in Geva et al.; they do not change the token ranking for RMSNorm models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import neuron_label
from uncover.core.results import Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel


@dataclass
class NeuronLogits(Result):
    """Promoted and suppressed tokens of MLP neurons' value vectors.

    Attributes:
        layer: the MLP layer.
        neurons: the neuron indices.
        top_ids, top_values: ``[n, k]`` most promoted token ids and their logit contributions.
        bottom_ids, bottom_values: ``[n, k]`` most suppressed (most negative first).
        strs: token id -> string for the ids shown.
    """

    layer: int
    neurons: list[int]
    top_ids: torch.Tensor
    top_values: torch.Tensor
    bottom_ids: torch.Tensor
    bottom_values: torch.Tensor
    strs: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def title(self) -> str:
        return f"Value vectors of layer {self.layer} MLP neurons through the unembedding"

    def promoted(self, i: int) -> list[str]:
        """The promoted tokens of the ``i``-th neuron listed."""
        return [self.strs.get(t, str(t)) for t in self.top_ids[i].tolist()]

    def suppressed(self, i: int) -> list[str]:
        """The suppressed tokens of the ``i``-th neuron listed."""
        return [self.strs.get(t, str(t)) for t in self.bottom_ids[i].tolist()]

    def summary(self) -> str:
        lines = [self.title]
        for i, n in enumerate(self.neurons[:12]):
            lines.append(f"  {neuron_label(self.layer, n)}: + {self.promoted(i)[:8]}  - {self.suppressed(i)[:5]}")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for i, n in enumerate(self.neurons):
            for r in range(self.top_ids.shape[1]):
                for sign, ids, vals in (("+", self.top_ids, self.top_values),
                                        ("-", self.bottom_ids, self.bottom_values)):
                    t = int(ids[i, r])
                    rows.append({"layer": self.layer, "neuron": n, "sign": sign, "rank": r, "token_id": t,
                                 "token": self.strs.get(t, str(t)), "logit": float(vals[i, r])})
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        i = 0
        toks = self.promoted(i)[::-1] + self.suppressed(i)
        vals = self.top_values[i].tolist()[::-1] + self.bottom_values[i].tolist()
        fig = go.Figure(go.Bar(x=vals, y=[repr(t) for t in toks], orientation="h"))
        fig.update_layout(title=f"{neuron_label(self.layer, self.neurons[i])}: promoted and suppressed tokens",
                          xaxis_title="logit contribution per unit activation", height=300 + 18 * len(toks))
        return fig


def value_logits(model: HookedModel, layer: int, neurons: Sequence[int] | None = None,
                 apply_norm_weight: bool = True) -> torch.Tensor:
    """``[n, d_vocab]``: ``(W_out[neurons] * g) @ W_U`` with ``g`` the final norm's gain.

    >>> value_logits(model, 10, [0, 1]).shape
    torch.Size([2, 49152])
    """
    cfg = model.cfg
    if not 0 <= layer < cfg.n_layers:
        raise UncoverError(f"layer {layer} out of range; valid: 0..{cfg.n_layers - 1}")
    w_out = model.W_out(layer).detach().float()  # [d_mlp, d_model]
    if neurons is not None:
        bad = [n for n in neurons if not 0 <= n < w_out.shape[0]]
        if bad:
            raise UncoverError(f"neuron(s) {bad} out of range; valid: 0..{w_out.shape[0] - 1}")
        w_out = w_out[list(neurons)]
    if apply_norm_weight:
        g, _, _ = model.adapter.norm_params(model.adapter.final_norm())
        if g is not None:
            w_out = w_out * g.detach().float()
    return w_out @ model.W_U.detach().float()


def neuron_logits(model: HookedModel, layer: int, neurons: Sequence[int] | None = None, k: int = 10,
                  apply_norm_weight: bool = True, chunk: int = 256) -> NeuronLogits:
    """Top-``k`` promoted and suppressed tokens of each neuron's value vector at ``layer``.

    ``neurons`` defaults to all ``d_mlp`` neurons (processed ``chunk`` at a time, so the
    ``[d_mlp, d_vocab]`` matrix is never held at once).

    >>> r = neuron_logits(model, 20, [5], k=5)
    >>> len(r.promoted(0))
    5
    """
    neurons = list(range(model.cfg.d_mlp)) if neurons is None else list(neurons)
    if not neurons:
        raise UncoverError("no neurons given")
    tops, bots = [], []
    for i in range(0, len(neurons), chunk):
        logits = value_logits(model, layer, neurons[i : i + chunk], apply_norm_weight)
        tops.append(logits.topk(k, dim=-1))
        bots.append(logits.topk(k, dim=-1, largest=False))
    top_ids = torch.cat([t.indices for t in tops])
    bot_ids = torch.cat([t.indices for t in bots])
    ids = sorted(set(top_ids.unique().tolist()) | set(bot_ids.unique().tolist()))
    strs = dict(zip(ids, model._strs(ids)))
    return NeuronLogits(layer, neurons, top_ids, torch.cat([t.values for t in tops]), bot_ids,
                        torch.cat([t.values for t in bots]), strs)
