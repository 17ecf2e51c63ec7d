"""Mixture-of-experts references written out by hand (routing and one expert), shared by the parity gate and
the MoE tests."""

from __future__ import annotations

import torch

from uncover import HookedModel


def route_by_hand(m: HookedModel, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights, index)`` ``[..., top_k]`` of each family's router, written out from its paper/model card."""
    k = m.cfg.top_k
    if m.cfg.family == "gpt_oss":  # top-k logits, softmaxed among themselves
        top, idx = logits.topk(k, dim=-1)
        return top.softmax(-1), idx
    top, idx = logits.softmax(-1).topk(k, dim=-1)  # softmax over all experts, then top-k
    if getattr(m.model.config, "norm_topk_prob", True):  # Mixtral always renormalises
        top = top / top.sum(-1, keepdim=True)
    return top, idx


def hidden_by_hand(m: HookedModel, layer: int, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert ``e``'s hidden activation (its down projection's input) on ``x`` ``[..., d_model]``."""
    ex = getattr(m.adapter.mlp(layer), m.adapter.family.experts)
    if m.cfg.family == "gpt_oss":  # [d, 2F] with gate/up interleaved, biases, clamped SwiGLU
        h = x @ ex.gate_up_proj[e] + ex.gate_up_proj_bias[e]
        gate, up = h[..., 0::2].clamp(max=ex.limit), h[..., 1::2].clamp(-ex.limit, ex.limit)
        return (up + 1) * gate * torch.sigmoid(ex.alpha * gate)
    gate, up = (x @ ex.gate_up_proj[e].T).chunk(2, dim=-1)
    return ex.act_fn(gate) * up


def expert_by_hand(m: HookedModel, layer: int, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert ``e``'s output on ``x`` ``[..., d_model]`` from its own weights (unweighted)."""
    ex = getattr(m.adapter.mlp(layer), m.adapter.family.experts)
    h = hidden_by_hand(m, layer, e, x)
    if m.cfg.family == "gpt_oss":
        return h @ ex.down_proj[e] + ex.down_proj_bias[e]
    return h @ ex.down_proj[e].T


def expert_maps_by_hand(m: HookedModel, layer: int, e: int) -> dict[str, torch.Tensor]:
    """Expert ``e``'s gate, up and down weights as ``[d_out, d_in]`` copies, read off the fused parameters."""
    ex = getattr(m.adapter.mlp(layer), m.adapter.family.experts)
    if m.cfg.family == "gpt_oss":
        gu = ex.gate_up_proj[e]  # [d, 2F], interleaved columns
        return {"gate_proj": gu[:, 0::2].T.clone(), "up_proj": gu[:, 1::2].T.clone(),
                "down_proj": ex.down_proj[e].T.clone()}
    gate, up = ex.gate_up_proj[e].chunk(2, dim=0)  # [2F, d]
    return {"gate_proj": gate.clone(), "up_proj": up.clone(), "down_proj": ex.down_proj[e].clone()}
