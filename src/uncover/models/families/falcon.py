"""Falcon (7B-style): multi-query attention in a fused q|k|v, parallel attention and MLP on one norm.

The block adds the attention output into the MLP's output tensor in place, so ``hook_mlp_out``
reads a copy taken before that addition.

Refused: the ``new_decoder_architecture`` (Falcon-40B/180B: grouped q..q|k|v per KV group and
two norms), ALiBi positions, and sequential (non-parallel) blocks.
"""

from __future__ import annotations

from typing import Any

from uncover.models.adapter import Family


def _refuse(cfg: Any) -> list[str]:
    problems = []
    if getattr(cfg, "new_decoder_architecture", False):
        problems.append("new_decoder_architecture=True (Falcon-40B/180B layout)")
    if getattr(cfg, "alibi", False):
        problems.append("alibi=True (ALiBi positions)")
    if not getattr(cfg, "multi_query", True):
        problems.append("multi_query=False (per-head interleaved q|k|v)")
    if not getattr(cfg, "parallel_attn", True):
        problems.append("parallel_attn=False")
    return problems


FALCON = Family(
    name="falcon",
    model_types=("falcon",),
    layers="transformer.h",
    embed="transformer.word_embeddings",
    final_norm="transformer.ln_f",
    ln1="input_layernorm",
    ln2="input_layernorm",
    attn="self_attention",
    q=None,
    k=None,
    v=None,
    qkv_fused="query_key_value",
    qkv_layout="concat",
    o="dense",
    mlp_in="dense_h_to_4h",
    mlp_gate=None,
    mlp_out="dense_4h_to_h",
    norm_kind="layer",
    kv_heads=lambda cfg: 1,
    mlp_out_mutated=True,  # the block does mlp_output += attention_output
    parallel=lambda cfg: True,
    refuse=_refuse,
)
