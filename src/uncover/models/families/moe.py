"""Mixture-of-experts decoders: Mixtral, Qwen2-MoE (with a shared expert) and Qwen3-MoE.

Llama-shaped blocks whose MLP is a sparse MoE block: a router (``gate``) picks ``top_k`` of
``n_experts`` fused experts per token. ``hook_mlp_out`` is the mixed output (with Qwen2-MoE's
sigmoid-gated shared expert); ``mlp.hook_router`` the router logits ``[batch, pos, n_experts]``
(writing them does not re-route: the router has already chosen); ``mlp.hook_expert_out`` each
expert's weighted output ``[batch, pos, n_experts, d_model]``, zero where the expert was not chosen
(patching it changes the mixed output); ``mlp.hook_shared_expert``/``mlp.hook_shared_gate`` the
shared expert's output and its gate logit. There is no ``mlp.hook_pre``/``hook_post``: techniques
that assume one MLP per block refuse with one line (``Adapter.no_single_mlp``).

Refused: dense layers between sparse ones (``decoder_sparse_step`` other than 1, ``mlp_only_layers``).
"""

from __future__ import annotations

from typing import Any

from uncover.models.adapter import Family


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
    refuse=_refuse,
)
