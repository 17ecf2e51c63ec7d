"""Llama-shaped decoders with LayerNorm: OLMo (no norm parameters), StableLM, StarCoder2.

OLMo's LayerNorm has no weight or bias; StableLM 2 has a gated SiLU MLP and LayerNorm with
bias; StarCoder2 an ungated GELU MLP (``c_fc``/``c_proj``) and biases everywhere.
"""

from __future__ import annotations

from typing import Any

from uncover.models.adapter import Family


def _refuse_olmo(cfg: Any) -> list[str]:
    clip = getattr(cfg, "clip_qkv", None)
    return [f"clip_qkv={clip} (q/k/v clamped after the projections)"] if clip is not None else []


def _refuse_stablelm(cfg: Any) -> list[str]:
    problems = []
    if getattr(cfg, "qk_layernorm", False):
        problems.append("qk_layernorm=True (per-head q/k LayerNorms)")
    if getattr(cfg, "use_parallel_residual", False):
        problems.append("use_parallel_residual=True")
    return problems


OLMO = Family(
    name="olmo",
    model_types=("olmo",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    norm_kind="layer",
    refuse=_refuse_olmo,
)

STABLELM = Family(
    name="stablelm",
    model_types=("stablelm",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    norm_kind="layer",
    refuse=_refuse_stablelm,
)

STARCODER2 = Family(
    name="starcoder2",
    model_types=("starcoder2",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    mlp_in="c_fc",
    mlp_gate=None,
    mlp_out="c_proj",
    norm_kind="layer",
)
