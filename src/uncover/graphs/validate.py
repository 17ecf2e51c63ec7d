"""Checking a graph against the real model: remove (or steer) a feature's output and see the target logit move.

For each of the ``n`` features with the largest direct effect on the first target logit, the
real model runs with ``scale`` times that feature's contribution ``a * W_dec`` added to the MLP
outputs it writes to (every later layer for a CLT), at its position, through an
:class:`~uncover.hooks.interventions.Add` intervention; attention and the MLPs respond freely.
``scale = -1`` removes the feature (zero-ablation of its output), ``scale = 1`` doubles it
(steering). The graph predicts the change of the target (logit minus mean logit) twice: its
direct edge ``scale * A[logit, f]`` and its total effect through the visited features
(``scale * a_f * g_f`` with ``g = v (I - J)^{-1}``, ``J`` the edges per unit of source
activation among features and ``v`` those into the logit: downstream features respond
linearly, error nodes stay frozen). :func:`agreement` gives the Pearson correlation of predicted
and measured changes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from uncover.core.errors import UsageError
from uncover.hooks.interventions import Add
from uncover.transcoders.base import mlp_out

if TYPE_CHECKING:
    import pandas as pd

    from uncover.graphs.graph import AttributionGraph
    from uncover.hooks.hooked import HookedModel
    from uncover.transcoders import TranscoderSet


def total_effects(g: AttributionGraph, target: int = 0) -> torch.Tensor:
    """``[n_features]`` total effect on target logit ``target`` per unit of each visited feature's activation."""
    nf = g.n_features
    a = g.feature_act.double().clamp(min=1e-12)
    jac = g.adjacency[:nf, :nf].double() / a[None, :]
    v = g.adjacency[len(g.adjacency) - len(g.targets) + target, :nf].double() / a
    return torch.linalg.solve((torch.eye(nf, dtype=torch.float64) - jac).T, v)


@torch.no_grad()
def feature_effects(model: HookedModel, tset: TranscoderSet, g: AttributionGraph, n: int = 10,
                    scale: float = -1.0) -> pd.DataFrame:
    """Predicted and measured changes of the first target when each of the top ``n`` features is steered.

    ``scale``: the multiple of the feature's output added (-1: removed, 1: doubled).

    >>> df = feature_effects(model, tset, graph, n=5)  # doctest: +SKIP
    >>> list(df.columns)  # doctest: +SKIP
    ['node_id', 'layer', 'pos', 'feature', 'activation', 'predicted_direct', 'predicted_total', 'measured']
    """
    import pandas as pd

    if not math.isfinite(scale) or scale == 0:
        raise UsageError(f"feature_effects: scale must be a finite non-zero number, got {scale}")
    ids = torch.tensor(g.token_ids)[None].to(model.device)
    t = g.target_ids[0]

    def target_value(logits: torch.Tensor) -> float:
        z = logits[0, -1].double()
        return float(z[t] - z.mean())

    base = target_value(model(ids))
    logit_row = len(g.adjacency) - len(g.targets)
    direct = g.adjacency[logit_row, : g.n_features]
    total = total_effects(g)
    order = direct.abs().argsort(descending=True)[:n].tolist()
    rows = []
    for i in order:
        layer, pos, f = int(g.feature_layer[i]), int(g.feature_pos[i]), int(g.feature_index[i])
        act = float(g.feature_act[i])
        adds = []
        for dst in tset.layers:
            for src, w in tset.decoders_to(dst):
                if src == layer:
                    adds.append(Add(mlp_out(dst), vector=w[f].detach().to(model.dtype), scale=scale * act,
                                    positions=[pos]))
        with model.intervene(adds):
            measured = target_value(model(ids)) - base
        rows.append({"node_id": f"{layer}_{f}_{pos}", "layer": layer, "pos": pos, "feature": f, "activation": act,
                     "predicted_direct": scale * float(direct[i]), "predicted_total": scale * act * float(total[i]),
                     "measured": measured})
    return pd.DataFrame(rows)


def agreement(df: pd.DataFrame, column: str = "predicted_total") -> float:
    """Pearson correlation of ``column`` with the measured changes.

    >>> import pandas as pd
    >>> agreement(pd.DataFrame({"predicted_total": [1.0, 2.0, 3.0], "measured": [2.0, 4.0, 6.5]}))  # doctest: +ELLIPSIS
    0.99...
    """
    return float(torch.corrcoef(torch.tensor([df[column].tolist(), df["measured"].tolist()]))[0, 1])
