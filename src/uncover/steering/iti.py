"""Inference-time intervention (Li et al. 2023, "Inference-Time Intervention: Eliciting
Truthful Answers from a Language Model").

Every attention head's output ``z`` (``blocks.{l}.attn.hook_z``, ``[head, d_head]`` per
token) at the last token of labelled texts is probed with a logistic probe; the ``k``
heads with the best validation accuracy are kept. Each kept head is shifted along its
mass-mean direction ``θ = mean(z | 1) − mean(z | 0)`` (unit length), by ``α·σ`` with ``σ`` the
standard deviation of the activations projected on ``θ``, at every position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name
from uncover.data.activations import collect
from uncover.data.labelled import Labelled
from uncover.hooks.interventions import Add, Intervention
from uncover.probing.control import folds_of
from uncover.probing.linear import fit_probe
from uncover.steering.methods import Steering


@dataclass
class ITI(Steering):
    """Per-head shifts ``alpha × shift[l][h]`` added to ``blocks.{l}.attn.hook_z``.

    Attributes:
        shifts: layer -> ``[n_heads, d_head]`` (``σ·θ`` for chosen heads, zero elsewhere).
        alpha: the strength.
        heads: the chosen ``(layer, head)`` pairs, best first; accuracy: their validation accuracies.
    """

    shifts: dict[int, torch.Tensor]
    alpha: float = 5.0
    heads: list[tuple[int, int]] | None = None
    accuracy: list[float] | None = None

    def scaled(self, s: float) -> ITI:
        return replace(self, alpha=self.alpha * s)

    def interventions(self, model: Any, generating: bool = False) -> list[Intervention]:
        out: list[Intervention] = []
        for layer, shift in self.shifts.items():
            if not 0 <= layer < model.cfg.n_layers:
                raise UncoverError(f"layer {layer} out of range; this model has layers 0..{model.cfg.n_layers - 1}")
            out.append(Add(act_name("z", layer), vector=shift, scale=self.alpha))  # 0: heads not chosen
        return out


def fit_iti(model: Any, data: Labelled, *, k: int = 16, alpha: float = 5.0, val_fraction: float = 0.3,
            seed: int = 0, layers: Sequence[int] | None = None) -> ITI:
    """Probe every head's ``hook_z`` at the last token, keep the top ``k``, build mass-mean shifts.

    ``layers``: only heads of these layers are probed (default all; one probe per head is the
    cost, so a band of layers is much faster).

    >>> from uncover.data.labelled import truth_statements
    >>> steer = fit_iti(model, truth_statements(), k=4, alpha=5, layers=[11, 12])
    >>> len(steer.heads), set(steer.shifts) <= {11, 12}
    (4, True)
    """
    data.check()
    c = model.cfg
    layer_list = list(range(c.n_layers)) if layers is None else sorted({int(la) for la in layers})
    if not layer_list or not all(0 <= la < c.n_layers for la in layer_list):
        raise UncoverError(f"layers must be a non-empty subset of 0..{c.n_layers - 1}, got {list(layers or [])}")
    if not 1 <= k <= len(layer_list) * c.n_heads:
        raise UncoverError(f"k must be between 1 and {len(layer_list) * c.n_heads} heads, got {k}")
    hooks = [act_name("z", la) for la in layer_list]
    acts = collect(model, data, hooks, progress=False)
    y = data.y
    n_folds = max(2, round(1 / val_fraction))
    val = folds_of(len(y), n_folds, groups=data.groups, seed=seed)[0]
    tr = torch.ones(len(y), dtype=torch.bool)
    tr[val] = False
    scores = []
    for la, h in zip(layer_list, hooks):
        z = acts[h]  # [n, head, d_head]
        for hd in range(z.shape[1]):
            p = fit_probe(z[tr, hd], y[tr], l2=1e-1)
            scores.append((p.score(z[val, hd], y[val]), la, hd))
    scores.sort(key=lambda t: -t[0])
    top = scores[:k]
    shifts: dict[int, torch.Tensor] = {}
    for _, la, hd in top:
        z = acts[act_name("z", la)][:, hd]
        theta = z[y == 1].mean(0) - z[y == 0].mean(0)
        theta = theta / theta.norm().clamp_min(1e-12)
        sigma = float((z @ theta).std())
        shifts.setdefault(la, torch.zeros(c.n_heads, c.d_head))[hd] = sigma * theta
    return ITI(dict(sorted(shifts.items())), alpha, [(la, hd) for _, la, hd in top], [a for a, _, _ in top])
