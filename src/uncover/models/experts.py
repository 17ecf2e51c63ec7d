"""Mixture-of-experts parts of an :class:`~uncover.models.adapter.Adapter`: routing, the fused experts, refusals.

The experts module stores every expert in fused 3D parameters (``gate_up_proj``, ``down_proj``; gpt-oss
transposed and with biases, as the module's ``is_transposed``/``has_bias`` flags say). These methods
recompute what it computes, expert by expert, for ``mlp.hook_expert_out`` and for per-expert pruning
calibration, and re-route written router logits through the family's own routing (``Family.route``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from uncover.core.errors import UnsupportedModel

if TYPE_CHECKING:
    from uncover.models.adapter import Family, ModelConfig


class ExpertsMixin:
    """Mixture-of-experts methods of the adapter (``family``, ``cfg`` and ``mlp(layer)`` come from it)."""

    family: Family
    cfg: ModelConfig
    layers: Any
    mlp: Any  # the adapter's mlp(layer)

    def check_experts(self) -> None:
        """Refuse experts stored other than as floating-point fused tensors (gpt-oss's packed MXFP4 blocks)."""
        if not self.cfg.n_experts or not len(self.layers):
            return
        w = getattr(self.experts_module(0), "gate_up_proj", None)
        if w is None or not w.is_floating_point():
            kind = "missing" if w is None else f"{w.dtype}"
            raise UnsupportedModel(
                f"{self.family.name}: the experts' gate_up_proj is {kind}, not a floating-point fused tensor "
                "(quantized, e.g. MXFP4 blocks); load the model dequantized (gpt-oss: "
                "quantization_config=Mxfp4Config(dequantize=True))"
            )

    def no_single_mlp(self, what: str) -> UnsupportedModel:
        """The one-line refusal of techniques that assume one MLP per block, on a mixture-of-experts family."""
        return UnsupportedModel(
            f"{self.family.name} has a mixture-of-experts MLP ({self.cfg.n_experts} experts, top-{self.cfg.top_k}): "
            f"{what} assume one MLP per block; read blocks.L.mlp.hook_expert_out and blocks.L.mlp.hook_router"
        )

    def moe_points(self) -> list[str]:
        """Hook points of a mixture-of-experts MLP, in forward order (empty for a dense MLP)."""
        if not self.cfg.n_experts:
            return []
        shared = ["mlp.hook_shared_expert", "mlp.hook_shared_gate"] if self.family.shared_expert else []
        return ["mlp.hook_router", "mlp.hook_expert_out", *shared]

    def route(self, layer: int, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(top_k_weights, top_k_index)`` ``[tokens, top_k]`` the router of ``layer`` picks from ``logits``
        ``[tokens, n_experts]``: exactly its own computation, so written logits re-route as if it produced them."""
        if self.family.route is None:
            raise self.no_single_mlp("re-routing")  # pragma: no cover - every MoE family declares route
        return self.family.route(_get(self.mlp(layer), self.family.router), logits)

    def expert_outputs(self, layer: int, x: torch.Tensor, top_k_index: torch.Tensor,
                       top_k_weights: torch.Tensor) -> torch.Tensor:
        """Each routed expert's weighted output ``[tokens, n_experts, d_model]`` (0 where not routed).

        ``x``: ``[tokens, d_model]``, the experts module's input; ``top_k_index``/``top_k_weights``: ``[tokens,
        top_k]`` from the router. Their sum over experts is the experts module's output (to rounding).
        """
        out = self.expert_mlp(layer, x)
        w = torch.zeros(x.shape[0], self.cfg.n_experts, dtype=top_k_weights.dtype, device=x.device)
        w.scatter_add_(1, top_k_index, top_k_weights)
        return (out * w[..., None]).to(x.dtype)

    def experts_module(self, layer: int) -> nn.Module:
        """The fused experts module of ``layer`` (``gate_up_proj``, ``down_proj``, optional biases)."""
        return _get(self.mlp(layer), self.family.experts)  # type: ignore[arg-type]

    def expert_hidden(self, layer: int, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        """Every expert's hidden activation (the down projection's input) ``[tokens, n_experts, d_mlp]``
        (``expert``: only that one, ``[tokens, 1, d_mlp]``).

        Follows the module's own layout flags (``is_transposed``: ``[E, d_in, d_out]`` as gpt-oss stores
        them; ``has_bias``) and its own gate (``_apply_gate``: SiLU·up, or gpt-oss's clamped SwiGLU).
        """
        ex = self.experts_module(layer)
        sl = slice(None) if expert is None else slice(expert, expert + 1)
        t = getattr(ex, "is_transposed", False)
        h = torch.einsum("nd,edf->nef" if t else "nd,efd->nef", x, ex.gate_up_proj[sl].to(x.dtype))
        if getattr(ex, "has_bias", False):
            h = h + ex.gate_up_proj_bias[sl].to(x.dtype)
        return ex._apply_gate(h)

    def expert_mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Every expert's output on every token ``[tokens, n_experts, d_model]`` (unweighted)."""
        ex = self.experts_module(layer)
        t = getattr(ex, "is_transposed", False)
        out = torch.einsum("nef,efd->ned" if t else "nef,edf->ned", self.expert_hidden(layer, x),
                           ex.down_proj.to(x.dtype))
        if getattr(ex, "has_bias", False):
            out = out + ex.down_proj_bias.to(x.dtype)
        return out


def _get(root: nn.Module, path: str) -> Any:
    mod: Any = root
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod
