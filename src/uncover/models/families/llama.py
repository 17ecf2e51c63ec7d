"""Llama-style decoders: Llama (incl. SmolLM2), SmolLM3, Mistral, Qwen2 and Qwen3.

Pre-norm RMSNorm blocks, rotary positions, separate q/k/v projections (grouped-query
attention allowed), gated SiLU MLP. Qwen3 adds per-head q/k RMSNorm.
"""

from __future__ import annotations

from typing import Any

from uncover.models.adapter import Family


def _refuse(cfg: Any) -> list[str]:
    problems = []
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        problems.append(f"pretraining_tp={cfg.pretraining_tp} (only 1)")
    if getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts", None):
        problems.append("mixture-of-experts MLPs")
    return problems


LLAMA = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "smollm3"),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    refuse=_refuse,
)

QWEN3 = Family(
    name="qwen3",
    model_types=("qwen3",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    q_norm="q_norm",
    k_norm="k_norm",
    refuse=_refuse,
)
