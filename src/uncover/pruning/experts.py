"""Mixture-of-experts weights as prunable linear maps, and per-expert calibration inputs.

A sparse MoE block stores its experts fused in 3D parameters (``gate_up_proj`` ``[E, 2F, d]`` and
``down_proj`` ``[E, d, F]``; gpt-oss stores them transposed, ``[E, d, 2F]`` with gate and up
interleaved, and ``[E, F, d]``). Each expert has three linear maps, its gate, up and down
projections; :class:`ExpertSite` is one of them as an ``[d_out, d_in]`` view, so the unstructured
methods prune it as they prune a dense ``gate_proj``/``up_proj``/``down_proj`` (magnitude within the
matrix, Wanda and SparseGPT per output row). Biases and the router are not pruned, as for dense layers
(where only weights are) and as MoE pruning practice keeps the router intact.

Calibration (Wanda, SparseGPT) sees, for each expert, only the tokens the router sent to it: the gate
and up maps read those tokens' MLP inputs, the down map those tokens' hidden activations (the gated
product), computed with the block's unpruned weights as for dense layers. An expert that got no
calibration token has no statistics; :mod:`uncover.pruning.calibrate` then prunes it by magnitude per
row (Wanda's score with equal input norms) and reports it in the result's options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from uncover.hooks import weights

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

PARTS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ExpertSite:
    """One linear map (gate, up or down projection) of one expert, viewed inside the fused 3D parameter."""

    layer: int
    """Block index."""
    name: str
    """``mlp.experts.3.gate_proj``: the experts module's path inside the block, the expert, the map."""
    param_path: str
    """The fused parameter from the HF model root (``model.layers.0.mlp.experts.gate_up_proj``)."""
    expert: int
    part: str
    """``gate_proj``, ``up_proj`` or ``down_proj``."""
    module: nn.Module = field(compare=False, repr=False)
    """The experts module."""

    @property
    def path(self) -> str:
        return self.param_path

    @property
    def kind(self) -> str:
        return "expert"

    @property
    def param(self) -> torch.Tensor:
        """The whole fused parameter ``[E, ...]``."""
        return getattr(self.module, self.param_path.rsplit(".", 1)[1])

    def view(self, w: torch.Tensor) -> torch.Tensor:
        """This map of ``w`` (the fused parameter ``[E, ...]``) as ``[d_out, d_in]`` (a view)."""
        t = w[self.expert]
        if getattr(self.module, "is_transposed", False):
            t = t.T  # gpt-oss stores [d_in, d_out]
        if self.part == "down_proj":
            return t
        if getattr(self.module, "is_concatenated", True):  # [gate | up] halves
            half = t.shape[0] // 2
            return t[:half] if self.part == "gate_proj" else t[half:]
        return t[0::2] if self.part == "gate_proj" else t[1::2]  # gpt-oss interleaves gate and up

    @property
    def rows(self) -> torch.Tensor:
        """The weight as ``[d_out, d_in]`` (a view of the model's parameter; ``meta`` if offloaded)."""
        return self.view(self.param)

    def value(self, model: HookedModel) -> torch.Tensor:
        """The weight as ``[d_out, d_in]``, real even when accelerate offloaded it (for reading)."""
        return self.view(weights.read(model, self.param_path))

    def write(self, model: HookedModel, new: torch.Tensor) -> None:
        """Set this map to ``new`` ``[d_out, d_in]``: in place, or into a copy written back where it lives."""
        if self.param.device.type != "meta":
            with torch.no_grad():
                self.rows.copy_(new.to(self.param.device, self.param.dtype))
            return
        full = weights.read(model, self.param_path).detach().clone()
        self.view(full).copy_(new.to(full.device, full.dtype))
        weights.write(model, self.param_path, full)


def expert_sites(model: HookedModel, layer: int) -> list[ExpertSite]:
    """Every expert's gate, up and down map of block ``layer`` (empty for a dense MLP).

    >>> from tests.families.kinds import family_model
    >>> [s.name for s in expert_sites(family_model("mixtral"), 0)][:3]
    ['mlp.experts.0.gate_proj', 'mlp.experts.0.up_proj', 'mlp.experts.0.down_proj']
    """
    a = model.adapter
    if not model.cfg.n_experts:
        return []
    inner = f"{a.family.mlp}.{a.family.experts}"
    ex = a.experts_module(layer)
    root = f"{a.family.layers}.{layer}.{inner}"
    return [ExpertSite(layer, f"{inner}.{e}.{part}", f"{root}.{'down_proj' if part == 'down_proj' else 'gate_up_proj'}",
                       e, part, ex)
            for e in range(model.cfg.n_experts) for part in PARTS]


def calibration_hook(model: HookedModel, layer: int, sites: list[ExpertSite], stats: dict[str, Any],
                     new_stats: Callable[[], Any]) -> Callable:
    """A forward pre-hook for the experts module of ``layer`` that accumulates, per expert, the inputs of its maps.

    ``new_stats()`` makes an empty statistics object with ``add(x [tokens, d_in])``; ``stats`` receives
    ``{site name: statistics}`` for the experts that saw at least one token (gate and up share theirs).
    """
    by_expert: dict[int, dict[str, ExpertSite]] = {}
    for s in sites:
        by_expert.setdefault(s.expert, {})[s.part] = s

    def hook(mod: nn.Module, args: tuple) -> None:
        x, index = args[0], args[1]  # [tokens, d_model], [tokens, top_k]
        x = x.reshape(-1, x.shape[-1])
        with torch.no_grad():
            for e, parts in by_expert.items():
                routed = (index == e).any(-1)
                if not bool(routed.any()):
                    continue
                xe = x[routed]
                key = parts["gate_proj"].name
                if key not in stats:
                    stats[key] = stats[parts["up_proj"].name] = new_stats()
                    stats[parts["down_proj"].name] = new_stats()
                stats[key].add(xe)
                stats[parts["down_proj"].name].add(model.adapter.expert_hidden(layer, xe, e)[:, 0])

    return hook
