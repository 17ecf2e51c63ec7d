"""Phi-1/1.5/2 (``phi``) and Phi-3/3.5/4-mini (``phi3``).

Phi (1, 1.5, 2): LayerNorm, partial rotary, attention and MLP in parallel on one shared norm
(``ln2.hook_normalized`` is the same tensor as ``ln1.hook_normalized``), ungated GELU MLP,
unembedding with a bias. Phi-3: pre-norm RMSNorm blocks like Llama, but q|k|v in one fused
``qkv_proj`` and gate|up in one fused ``gate_up_proj``.
"""

from __future__ import annotations

from typing import Any

from uncover.models.adapter import Family


def _refuse_phi(cfg: Any) -> list[str]:
    return ["qk_layernorm=True (per-head q/k LayerNorms)"] if getattr(cfg, "qk_layernorm", False) else []


PHI = Family(
    name="phi",
    model_types=("phi",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.final_layernorm",
    ln1="input_layernorm",
    ln2="input_layernorm",
    o="dense",
    mlp_in="fc1",
    mlp_gate=None,
    mlp_out="fc2",
    norm_kind="layer",
    parallel=lambda cfg: True,
    refuse=_refuse_phi,
)

PHI3 = Family(
    name="phi3",
    model_types=("phi3",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    q=None,
    k=None,
    v=None,
    qkv_fused="qkv_proj",
    qkv_layout="concat",
    mlp_in="gate_up_proj",
    mlp_gate=None,
    mlp_fused_gate_up=True,
)
