"""Mixture-of-experts decoders: Mixtral, Qwen2-MoE (with a shared expert) and Qwen3-MoE.

Llama-shaped blocks whose MLP is a sparse MoE block: a router (``gate``) picks ``top_k`` of
``n_experts`` fused experts per token. ``hook_mlp_out`` is the mixed output (with Qwen2-MoE's
sigmoid-gated shared expert); ``mlp.hook_router`` the router logits ``[batch, pos, n_experts]``
(writing them re-routes: the top-k choice and its weights are recomputed from the written logits
exactly as the router computes them, ``Family.route``); ``mlp.hook_expert_out`` each
expert's weighted output ``[batch, pos, n_experts, d_model]``, zero where the expert was not chosen
(patching it changes the mixed output); ``mlp.hook_shared_expert``/``mlp.hook_shared_gate`` the
shared expert's output and its gate logit. There is no ``mlp.hook_pre``/``hook_post``: techniques
that assume one MLP per block refuse with one line (``Adapter.no_single_mlp``).

Refused: dense layers between sparse ones (``decoder_sparse_step`` other than 1, ``mlp_only_layers``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from uncover.models.adapter import Family


def softmax_topk(router: nn.Module, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtral's routing: softmax over all experts in float32, top-k, renormalised (float32 weights).

    >>> class R: top_k = 1
    >>> softmax_topk(R(), torch.tensor([[0.0, 2.0]]))
    (tensor([[1.]]), tensor([[1]]))
    """
    probs = torch.softmax(logits.float(), dim=-1)
    top, index = torch.topk(probs, router.top_k, dim=-1)
    return top / top.sum(dim=-1, keepdim=True), index


def softmax_topk_qwen(router: nn.Module, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen-MoE's routing: as Mixtral's, renormalised only with ``norm_topk_prob``, in the logits' dtype.

    >>> class R: top_k, norm_topk_prob = 1, False
    >>> softmax_topk_qwen(R(), torch.tensor([[0.0, 0.0]]))
    (tensor([[0.5000]]), tensor([[0]]))
    """
    probs = torch.softmax(logits, dim=-1, dtype=torch.float)
    top, index = torch.topk(probs, router.top_k, dim=-1)
    if router.norm_topk_prob:
        top = top / top.sum(dim=-1, keepdim=True)
    return top.to(logits.dtype), index


def _refuse(cfg: Any) -> list[str]:
    problems = []
    if getattr(cfg, "decoder_sparse_step", 1) not in (None, 1):
        problems.append(f"decoder_sparse_step={cfg.decoder_sparse_step} (dense MLPs between the MoE layers)")
    if getattr(cfg, "mlp_only_layers", None):
        problems.append(f"mlp_only_layers={cfg.mlp_only_layers} (dense MLPs between the MoE layers)")
    return problems


MIXTRAL = Family(
    name="mixtral",
    model_types=("mixtral",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    experts="experts",
    route=softmax_topk,
    refuse=_refuse,
)

QWEN2_MOE = Family(
    name="qwen2_moe",
    model_types=("qwen2_moe",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    experts="experts",
    shared_expert="shared_expert",
    shared_expert_gate="shared_expert_gate",
    route=softmax_topk_qwen,
    refuse=_refuse,
)

QWEN3_MOE = Family(
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    q_norm="q_norm",
    k_norm="k_norm",
    experts="experts",
    route=softmax_topk_qwen,
    refuse=_refuse,
)
