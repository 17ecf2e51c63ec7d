"""GPT-J: LayerNorm, partial rotary, attention and MLP in parallel on one shared norm, unembedding bias.

``ln2.hook_normalized`` is the same tensor as ``ln1.hook_normalized`` (the block has one norm).
"""

from __future__ import annotations

from uncover.models.adapter import Family

GPTJ = Family(
    name="gptj",
    model_types=("gptj",),
    layers="transformer.h",
    embed="transformer.wte",
    final_norm="transformer.ln_f",
    ln1="ln_1",
    ln2="ln_1",
    attn="attn",
    o="out_proj",
    mlp_in="fc_in",
    mlp_gate=None,
    mlp_out="fc_out",
    norm_kind="layer",
    parallel=lambda cfg: True,
)
