"""OLMo 2: RMSNorms only after attention and MLP (no pre-norms), q/k RMSNorms over the whole projection.

The block is ``x + norm(attn(x))`` then ``x + norm(mlp(x))``: ``hook_attn_out``/``hook_mlp_out`` are the
post-norm values that join the residual (as Gemma 2's), and ``ln1``/``ln2.hook_normalized`` are the
attention's and MLP's inputs, the residual itself (there is no norm to read). ``hook_q``/``hook_k`` are after
the q/k norms, which normalise all heads together (``[batch, pos, heads * d_head]``), viewed per head.
"""

from __future__ import annotations

from uncover.models.adapter import Family

OLMO2 = Family(
    name="olmo2",
    model_types=("olmo2",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    ln1=None,
    ln2=None,
    attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
    q_norm="q_norm",
    k_norm="k_norm",
    qk_norm_whole=True,
)
