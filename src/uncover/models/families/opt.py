"""OPT: pre-LayerNorm blocks whose MLP linears (``fc1``/``fc2``) sit in the block itself.

There is no MLP module (``mlp`` is ``""``, the block), so ``hook_mlp_out`` is ``fc2``'s output (before
dropout and the residual add). The block flattens ``[batch, pos]`` around ln2 and the MLP; those hooks
see ``[batch, pos, ...]``. Learned positions start at row 2 of the table (``W_pos`` skips those rows);
the query projection's output is scaled by ``d_head**-0.5`` after ``hook_q``.

Refused: post-LN blocks (``do_layer_norm_before=False``, OPT-350m), a projection between the
embedding width and the model width (``word_embed_proj_dim``), and a missing final norm.
"""

from __future__ import annotations

from typing import Any

from uncover.models.adapter import Family


def _refuse(cfg: Any) -> list[str]:
    problems = []
    if not getattr(cfg, "do_layer_norm_before", True):
        problems.append("do_layer_norm_before=False (post-LN blocks: the norm sits after the residual add)")
    proj = getattr(cfg, "word_embed_proj_dim", None)
    if proj is not None and proj != cfg.hidden_size:
        problems.append(f"word_embed_proj_dim={proj} != hidden_size (project_in/project_out around the blocks)")
    if getattr(cfg, "_remove_final_layer_norm", False):
        problems.append("_remove_final_layer_norm=True (no final norm)")
    return problems


OPT = Family(
    name="opt",
    model_types=("opt",),
    layers="model.decoder.layers",
    embed="model.decoder.embed_tokens",
    pos_embed="model.decoder.embed_positions",
    pos_offset=2,
    final_norm="model.decoder.final_layer_norm",
    ln1="self_attn_layer_norm",
    ln2="final_layer_norm",
    o="out_proj",
    mlp="",
    mlp_in="fc1",
    mlp_gate=None,
    mlp_out="fc2",
    mlp_out_at="fc2",
    mlp_tokens_flat=True,
    norm_kind="layer",
    refuse=_refuse,
)
