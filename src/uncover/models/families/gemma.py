"""Gemma 1, 2 and 3 (text): RMSNorm with ``(1 + weight)``, embeddings scaled by sqrt(d_model).

Gemma 2 and 3 add norms after attention and MLP outputs ("sandwich" norms), so
``hook_attn_out``/``hook_mlp_out`` are the post-norm values that join the residual.
Gemma 2 soft-caps attention scores and final logits; Gemma 3 adds per-head q/k norms.
"""

from __future__ import annotations

from typing import Any

from uncover.models.adapter import Family


def _refuse(cfg: Any) -> list[str]:
    if getattr(cfg, "vision_config", None) is not None:
        return ["multimodal Gemma (load the text model, model_type gemma3_text)"]
    return []


GEMMA = Family(
    name="gemma",
    model_types=("gemma",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    norm_kind="rms1p",
    refuse=_refuse,
)

GEMMA2 = Family(
    name="gemma2",
    model_types=("gemma2",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    ln2="pre_feedforward_layernorm",
    attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
    norm_kind="rms1p",
    final_softcap_attr="final_logit_softcapping",
    refuse=_refuse,
)

GEMMA3 = Family(
    name="gemma3",
    model_types=("gemma3_text",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    ln2="pre_feedforward_layernorm",
    attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
    q_norm="q_norm",
    k_norm="k_norm",
    qk_norm_heads_first=True,
    norm_kind="rms1p",
    final_softcap_attr="final_logit_softcapping",
    refuse=_refuse,
)
