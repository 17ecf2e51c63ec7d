"""GLM-4 (``glm4``): Llama-like blocks with sandwich norms and a fused gate|up projection.

Norms after attention (``post_self_attn_layernorm``) and after the MLP (``post_mlp_layernorm``)
act before their outputs join the residual, so ``hook_attn_out``/``hook_mlp_out`` are the
post-norm values; the MLP's input norm is called ``post_attention_layernorm`` in HF.
"""

from __future__ import annotations

from uncover.models.adapter import Family

GLM4 = Family(
    name="glm4",
    model_types=("glm4",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    ln2="post_attention_layernorm",
    attn_post_norm="post_self_attn_layernorm",
    mlp_post_norm="post_mlp_layernorm",
    mlp_in="gate_up_proj",
    mlp_gate=None,
    mlp_fused_gate_up=True,
)
