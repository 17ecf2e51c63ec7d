"""Turn intervention values into hook functions (positions and heads restricted)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import HookName
from uncover.hooks.engine import HookFn, HookPoint
from uncover.hooks.interventions import Intervention

_QK_AXES = ("hook_pattern", "hook_attn_scores")


def check(iv: Intervention) -> None:
    """Refuse ``heads`` on hooks that have no head axis."""
    h = HookName.parse(iv.hook)
    if iv.heads is not None and not h.per_head:
        raise UncoverError(
            f"{type(iv).__name__} on {iv.hook!r} names heads, but that hook has no head axis; "
            "use an attn.hook_q/k/v/z/pattern/attn_scores/result hook"
        )


def as_hook(iv: Intervention) -> HookFn:
    """A hook function applying ``iv``; values are ``[batch, pos, ...]`` (per-head: ``[batch, pos, head, ...]``,
    patterns ``[batch, head, q, k]``)."""
    check(iv)
    qk = HookName.parse(iv.hook).leaf in _QK_AXES

    def fn(value: torch.Tensor, hp: HookPoint) -> torch.Tensor | None:
        v = value.transpose(1, 2) if qk else value  # positions on axis 1, heads on axis 2
        heads = None if iv.heads is None else torch.tensor(iv.heads, device=v.device)
        if iv.positions is None:
            rows = cols = None
        else:
            c = hp.state.columns(iv.positions, v.device)
            ok = c >= 0
            if not ok.any():
                return None
            rows = torch.arange(c.shape[0], device=v.device)[:, None].expand_as(c)[ok]
            cols = c[ok]

        def select(t: torch.Tensor) -> torch.Tensor:
            if qk and t.shape == value.shape:
                t = t.transpose(1, 2)
            if rows is not None:
                t = t[rows, cols]
                return t if heads is None else t.index_select(1, heads)
            return t if heads is None else t.index_select(2, heads)

        part = select(v)
        new = iv.new_value(part, value, select).to(v.dtype)
        if rows is None and heads is None:
            return new.transpose(1, 2) if qk else new
        out = v.clone()
        if rows is None:
            out[:, :, heads] = new
        elif heads is None:
            out[rows, cols] = new
        else:
            sub = out[rows, cols]
            sub[:, heads] = new
            out[rows, cols] = sub
        return out.transpose(1, 2) if qk else out

    return fn


def hooks_for(interventions: list[Intervention]) -> list[tuple[str, Callable]]:
    """``[(hook name, fn), ...]`` for a list of interventions, in order."""
    return [(iv.hook, as_hook(iv)) for iv in interventions]
