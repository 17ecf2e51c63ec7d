"""Attention scores and patterns under any attention implementation.

Fused kernels (SDPA, flash) never materialise the attention pattern. While a hook
on ``hook_attn_scores``/``hook_pattern`` is active, the model's attention
implementation is switched (on its config, restored on exit) to a registered
wrapper ``uncover|<impl>`` that receives the post-rotary queries and keys, computes
scores and the pattern on the side, runs the hooks, and then calls the original
implementation, so reading patterns leaves outputs bit-identical. Only when a hook
changes the scores or pattern is the output computed from the changed pattern.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

PREFIX = "uncover|"
ATTR = "_uncover_attn_hook"
"""Attribute set on an attention module while pattern hooks are active:
a callable ``(scores, sinks or None) -> (pattern, changed)``, with a method
``defer(scores_fn, [q, k, mask, sinks]) -> bool`` that takes the scores as a recipe instead when every
hook only caches them (see ``hooks/cache.py``)."""

_registered: set[str] = set()


def _original(impl: str, module: nn.Module) -> Callable[..., Any]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if impl == "eager" or impl not in ALL_ATTENTION_FUNCTIONS:
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[impl]


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[batch, kv_heads, k, d]`` → ``[batch, kv_heads * n_rep, k, d]``."""
    if n_rep == 1:
        return x
    b, h, k, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, k, d).reshape(b, h * n_rep, k, d)


def attention_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    softcap: float | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Masked attention scores ``[batch, head, q, k]`` (masked entries ``-inf``).

    ``query`` is ``[batch, head, q, d_head]``, ``key`` ``[batch, kv_head, k, d_head]``.
    ``attention_mask`` is HF's 4D mask: boolean (True = attend), additive float, or
    ``None`` for plain causal attention.
    """
    n_rep = query.shape[1] // key.shape[1]
    key = _repeat_kv(key, n_rep)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scaling)  # in place: one allocation, not two
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    q_len, k_len = scores.shape[-2:]
    if attention_mask is None:
        qi = torch.arange(q_len, device=scores.device)[:, None] + (k_len - q_len)
        ki = torch.arange(k_len, device=scores.device)[None, :]
        allowed = ki <= qi
        if sliding_window is not None:
            allowed = allowed & (qi - ki < sliding_window)
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask[..., :k_len]
    else:
        allowed = attention_mask[..., :k_len] > torch.finfo(attention_mask.dtype).min / 2
    return scores.masked_fill_(~allowed, float("-inf"))


def pattern_from_scores(scores: torch.Tensor, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over keys in float32, fully masked rows set to 0; ``[batch, head, q, k]``.

    ``sinks``: per-head sink logits ``[head]`` (gpt-oss), an extra key with no value that joins the
    normaliser, so each row sums to ``1 - p(sink)``.

    >>> pattern_from_scores(torch.zeros(1, 1, 1, 1), torch.zeros(1))
    tensor([[[[0.5000]]]])
    """
    if sinks is None:
        p = torch.softmax(scores, dim=-1, dtype=torch.float32)
    else:
        b, h, q, _ = scores.shape
        sink = sinks.to(scores.device, scores.dtype).reshape(1, h, 1, 1).expand(b, h, q, 1)
        p = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1, dtype=torch.float32)[..., :-1]
    return p.nan_to_num_(nan=0.0).to(scores.dtype)


def _make_wrapper(impl: str) -> Callable[..., Any]:
    def wrapper(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        original = _original(impl, module)
        hook = getattr(module, ATTR, None)
        if hook is None:
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        scaling = kwargs.get("scaling", getattr(module, "scaling", None))
        softcap, window = kwargs.get("softcap"), kwargs.get("sliding_window")
        sinks = kwargs.get("s_aux")  # gpt-oss passes its sink logits as s_aux

        def scores(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            return attention_scores(q, k, mask, scaling, softcap, window)

        defer = getattr(hook, "defer", None)  # only cache readers: they keep the recipe, nothing is computed now
        if defer is not None and defer(scores, [query, key, attention_mask, sinks]):
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        pattern, changed = hook(scores(query, key, attention_mask), sinks)
        if not changed:
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        v = _repeat_kv(value, query.shape[1] // value.shape[1])
        out = torch.matmul(pattern.to(v.dtype), v).transpose(1, 2).contiguous()
        return out, pattern

    return wrapper


def wrapped_name(impl: str) -> str:
    """Register (once) and return the wrapper implementation name for ``impl``."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    if impl.startswith(PREFIX):
        return impl
    name = PREFIX + impl
    if name not in _registered:
        AttentionInterface.register(name, _make_wrapper(impl))
        if impl in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[impl])
        _registered.add(name)
    return name


def configs_of(model: nn.Module, attn_modules: list[nn.Module]) -> list[Any]:
    """The distinct config objects that decide the attention implementation."""
    seen: dict[int, Any] = {id(model.config): model.config}
    for m in attn_modules:
        c = getattr(m, "config", None)
        if c is not None:
            seen.setdefault(id(c), c)
    return list(seen.values())
