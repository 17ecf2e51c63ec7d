"""GPT-BigCode (SantaCoder, StarCoder 1): GPT-2 blocks with ``nn.Linear`` and multi-query attention.

The fused ``c_attn`` holds q (``n_heads`` heads) | k | v (one head each with ``multi_query``).
"""

from __future__ import annotations

from typing import Any

from uncover.models.adapter import Family


def _kv(cfg: Any) -> int:
    return 1 if getattr(cfg, "multi_query", True) else cfg.n_head


def _refuse(cfg: Any) -> list[str]:
    return ["add_cross_attention=True"] if getattr(cfg, "add_cross_attention", False) else []


GPT_BIGCODE = Family(
    name="gpt_bigcode",
    model_types=("gpt_bigcode",),
    layers="transformer.h",
    embed="transformer.wte",
    pos_embed="transformer.wpe",
    final_norm="transformer.ln_f",
    ln1="ln_1",
    ln2="ln_2",
    attn="attn",
    q=None,
    k=None,
    v=None,
    qkv_fused="c_attn",
    qkv_layout="concat",
    o="c_proj",
    mlp_in="c_fc",
    mlp_gate=None,
    mlp_out="c_proj",
    norm_kind="layer",
    kv_heads=_kv,
    refuse=_refuse,
)
