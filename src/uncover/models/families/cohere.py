"""Cohere (Command-R): parallel blocks on one LayerNorm (no bias), a logit scale after the unembedding.

``x + attn(ln(x)) + mlp(ln(x))``: no ``hook_resid_mid``, ``ln2`` is ``ln1``. The model multiplies the
unembedding's output by ``logit_scale``: the ``logits`` hook and :attr:`Adapter.logit_scale` include it,
so DLA's components sum to the model's own logit difference. With ``use_qk_norm`` the per-head q/k
LayerNorms see ``[batch, pos, head, d_head]`` and ``hook_q``/``hook_k`` are after them.
"""

from __future__ import annotations

from uncover.models.adapter import Family

COHERE = Family(
    name="cohere",
    model_types=("cohere",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    ln2="input_layernorm",
    q_norm="q_norm",  # only where use_qk_norm=True (the adapter drops norms the attention lacks)
    k_norm="k_norm",
    norm_kind="layer",
    parallel=lambda cfg: True,
    logit_scale=lambda cfg: float(getattr(cfg, "logit_scale", 1.0) or 1.0),
)
