"""Bloom: ALiBi positions, a LayerNorm on the embeddings, attention and MLP modules that add the residual.

``hook_embed`` is the embedding LayerNorm's output (what the first block reads, so the residual stream
decomposes exactly); causal tracing measures its noise there. The attention and MLP modules return
``output + residual``: ``hook_attn_out`` is ``self_attention.dense``'s output and ``hook_mlp_out``
``mlp.dense_4h_to_h``'s, before the residual add. Attention is computed inline with ALiBi biases (no
attention function to wrap): ``hook_pattern`` is the softmax (``attention_dropout``'s output); there is
no ``hook_attn_scores``. q|k|v are fused per head (``neox`` layout).

Refused: ``apply_residual_connection_post_layernorm`` (the residual is the normed stream) and
``pretraining_tp > 1`` with ``slow_but_exact`` (the output projection in slices).
"""

from __future__ import annotations

from typing import Any

from uncover.models.adapter import Family


def _refuse(cfg: Any) -> list[str]:
    problems = []
    if getattr(cfg, "apply_residual_connection_post_layernorm", False):
        problems.append("apply_residual_connection_post_layernorm=True (the residual is the normed stream)")
    if getattr(cfg, "pretraining_tp", 1) > 1 and getattr(cfg, "slow_but_exact", False):
        problems.append(f"pretraining_tp={cfg.pretraining_tp} with slow_but_exact (sliced output projection)")
    return problems


BLOOM = Family(
    name="bloom",
    model_types=("bloom",),
    layers="transformer.h",
    embed="transformer.word_embeddings",
    embed_norm="transformer.word_embeddings_layernorm",
    final_norm="transformer.ln_f",
    attn="self_attention",
    q=None,
    k=None,
    v=None,
    qkv_fused="query_key_value",
    qkv_layout="neox",
    o="dense",
    attn_out_at="self_attention.dense",
    pattern_at="attention_dropout",
    mlp_in="dense_h_to_4h",
    mlp_gate=None,
    mlp_out="dense_4h_to_h",
    mlp_out_at="mlp.dense_4h_to_h",
    norm_kind="layer",
    refuse=_refuse,
)
