"""Granite (IBM Granite 3): a Llama block with four multipliers applied outside the modules.

Each scale sits where the decomposition stays exact: ``hook_embed`` is the embedding times
``embedding_multiplier`` (and :attr:`Adapter.embed_scale` says so, for causal tracing's noise);
``hook_attn_out``, ``hook_mlp_out`` and ``hook_result`` are the outputs times ``residual_multiplier``,
as they join the residual (``W_O``, ``b_O``, ``W_out``, ``b_out`` are scaled copies, so per-head results
sum to ``hook_attn_out``); ``logits`` and :attr:`Adapter.logit_scale` include ``1 / logits_scaling``,
so DLA sums to the model's own logit difference. ``attention_multiplier`` is the attention's own
score scale (inside the attention function: patterns are exact).
"""

from __future__ import annotations

from uncover.models.adapter import Family

GRANITE = Family(
    name="granite",
    model_types=("granite",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    embed_multiplier=lambda cfg: float(cfg.embedding_multiplier),
    residual_multiplier=lambda cfg: float(cfg.residual_multiplier),
    logit_scale=lambda cfg: 1.0 / float(cfg.logits_scaling),
)
