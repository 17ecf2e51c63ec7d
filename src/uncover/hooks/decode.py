"""Decoding residual streams into logits, and target tokens given as text or ids.

Shared by every technique that reads a residual stream through the model's own head: the
logit and tuned lenses, DoLa, causal tracing, staged replay (:mod:`uncover.hooks.replay`),
direct logit attribution and circuit metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from uncover.core.errors import TokenError

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def decode_resid(model: HookedModel, resid: torch.Tensor) -> torch.Tensor:
    """Logits from residual-stream vectors ``[..., d_model]`` → ``[..., d_vocab]``.

    Applies the model's own final norm module, the unembedding (and bias) and any final
    soft-capping, exactly as the model does to its last residual.

    >>> logits, cache = model.run_with_cache("The Eiffel Tower is in", ["blocks.29.hook_resid_post"])
    >>> torch.allclose(decode_resid(model, cache["blocks.29.hook_resid_post"]), logits, atol=1e-4)
    True
    """
    a = model.adapter
    x = a.final_norm()(resid.to(model.dtype))
    logits = x @ a.W_U
    if a.b_U is not None:
        logits = logits + a.b_U
    logits = logits * a.logit_scale if a.logit_scale != 1.0 else logits  # Cohere
    cap = a.final_softcap
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def target_ids(model: HookedModel, targets: Sequence[str | int] | str | int | None) -> list[int]:
    """Token ids of ``targets`` (strings must be exactly one token; ints are ids).

    >>> target_ids(model, [" Paris", 7042]) == [model.to_single_token(" Paris"), 7042]
    True
    """
    if targets is None:
        return []
    if isinstance(targets, (str, int)):
        targets = [targets]
    ids = []
    for t in targets:
        if isinstance(t, int):
            if not 0 <= t < model.cfg.d_vocab:
                raise TokenError(f"token id {t} is outside the vocabulary [0, {model.cfg.d_vocab})")
            ids.append(t)
        else:
            ids.append(model.to_single_token(t))
    return ids
