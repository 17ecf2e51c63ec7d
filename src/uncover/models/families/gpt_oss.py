"""gpt-oss (OpenAI 2025, "gpt-oss-120b & gpt-oss-20b Model Card"): a mixture-of-experts decoder with
attention sinks.

Llama-shaped pre-norm blocks (RMSNorm, separate q/k/v/o projections with biases, grouped-query
attention, YaRN rotary positions, sliding-window and full attention layers alternating) whose MLP
is a router with a bias plus ``n_experts`` experts stored transposed (``gate_up_proj [E, d, 2F]``
with gate and up interleaved, ``down_proj [E, F, d]``, each with a bias) and a clamped SwiGLU
(``(clamp(up) + 1) · g · σ(1.702 g)``, ``g = min(gate, 7)``). The router takes the top-k *logits*
and softmaxes over them (not over all experts, as Mixtral does).

Attention sinks: each head has a learned logit ``s_h`` that joins the softmax as an extra key with
no value, ``pattern[q, k] = exp(score[q, k]) / (exp(s_h) + Σ_k' exp(score[q, k']))``, so a head
can attend to nothing. ``attn.hook_attn_scores`` are the scores of the real keys; ``attn.hook_pattern``
includes the sink in its normaliser (its rows sum to less than 1, the rest is the sink's share),
and a write to either recomputes the output with the sink kept. ``hook_z`` and ``hook_result`` are
the o-projection's input and its per-head split, as for every family.

The MoE hooks are those of ``moe.py`` (``mlp.hook_router`` re-routes when written,
``mlp.hook_expert_out`` includes each expert's down-projection bias times its routing weight).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from uncover.models.adapter import Family

LAYER_TYPES = ("sliding_attention", "full_attention")


def topk_softmax(router: nn.Module, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gpt-oss's routing: the top-k logits, softmaxed among themselves (in the logits' dtype).

    >>> class R: top_k = 2
    >>> w, i = topk_softmax(R(), torch.tensor([[0.0, 5.0, 5.0]]))
    >>> w, i
    (tensor([[0.5000, 0.5000]]), tensor([[1, 2]]))
    """
    top, index = torch.topk(logits, router.top_k, dim=-1)
    return torch.softmax(top, dim=1, dtype=top.dtype), index


def _refuse(cfg: Any) -> list[str]:
    problems = []
    odd = sorted({t for t in (getattr(cfg, "layer_types", None) or ()) if t not in LAYER_TYPES})
    if odd:
        problems.append(f"layer_types {odd} (only {', '.join(LAYER_TYPES)})")
    return problems


GPT_OSS = Family(
    name="gpt_oss",
    model_types=("gpt_oss",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    attn_sinks="sinks",
    router="router",
    experts="experts",
    route=topk_softmax,
    refuse=_refuse,
)
