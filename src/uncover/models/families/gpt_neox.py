"""GPT-NeoX / Pythia: LayerNorm, partial rotary, fused per-head QKV, parallel attention+MLP."""

from __future__ import annotations

from uncover.models.adapter import Family

GPT_NEOX = Family(
    name="gpt_neox",
    model_types=("gpt_neox",),
    layers="gpt_neox.layers",
    embed="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm",
    attn="attention",
    q=None,
    k=None,
    v=None,
    qkv_fused="query_key_value",
    qkv_layout="neox",
    o="dense",
    mlp_in="dense_h_to_4h",
    mlp_gate=None,
    mlp_out="dense_4h_to_h",
    norm_kind="layer",
    parallel=lambda cfg: bool(getattr(cfg, "use_parallel_residual", True)),
)
