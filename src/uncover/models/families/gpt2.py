"""GPT-2: LayerNorm, learned absolute positions, fused ``c_attn`` stored as ``Conv1D``."""

from __future__ import annotations

from typing import Any

from uncover.models.adapter import Family


def _refuse(cfg: Any) -> list[str]:
    return ["add_cross_attention=True"] if getattr(cfg, "add_cross_attention", False) else []


GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
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
    qkv_layout="gpt2",
    o="c_proj",
    mlp_in="c_fc",
    mlp_gate=None,
    mlp_out="c_proj",
    norm_kind="layer",
    conv1d=True,
    refuse=_refuse,
)
