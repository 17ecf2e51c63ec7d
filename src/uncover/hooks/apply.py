"""Turn intervention values into hook functions (positions and heads restricted).

Inside a hook function every value is handled in a *working layout* with positions on
axis 1 and heads (when the hook has them) on axis 2: ``[batch, pos, head?, ...]``.
Patterns and scores (``[batch, head, q, k]``) are transposed into it and back, so that
positions address query positions there.
"""

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


class Selection:
    """The part of one hook value that an intervention changes.

    ``full`` is the whole value in the working layout ``[batch, pos, head?, ...]``;
    :meth:`select` restricts any tensor broadcastable to the hook's value (in the hook's own
    layout) to the same positions and heads; :meth:`mean` is the mean over the batch and
    the real (non-padding) positions of the current forward pass, restricted likewise.
    """

    def __init__(self, iv: Intervention, value: torch.Tensor, hp: HookPoint, qk: bool):
        self.value = value
        self.qk = qk
        self.full = value.transpose(1, 2) if qk else value
        self.hp = hp
        dev = value.device
        self.heads: torch.Tensor | None = None
        if iv.heads is not None:
            n = self.full.shape[2]
            bad = [h for h in iv.heads if not -n <= h < n]
            if bad:
                raise UncoverError(f"{iv.hook!r} has {n} heads (0..{n - 1}); got heads {bad}")
            self.heads = torch.tensor([h % n for h in iv.heads], device=dev)
        self.units: torch.Tensor | None = None
        if iv.units is not None:
            n = self.full.shape[-1]
            bad = [u for u in iv.units if not -n <= u < n]
            if bad:
                raise UncoverError(f"{iv.hook!r} has {n} units on its last axis (0..{n - 1}); got units {bad}")
            self.units = torch.tensor([u % n for u in iv.units], device=dev)
        self.rows: torch.Tensor | None = None
        self.cols: torch.Tensor | None = None
        self.empty = False
        if iv.positions is not None:
            c = hp.state.columns(iv.positions, dev)  # [batch, k]
            if c.shape[0] != self.full.shape[0]:
                raise UncoverError(
                    f"{iv.hook!r} has batch {self.full.shape[0]} but the forward pass has {c.shape[0]} rows; "
                    "positions cannot be addressed per row there"
                )
            if hp.state.offset == 0:  # the whole prompt is in this forward: every position must exist somewhere
                missing = [p for p, absent in zip(iv.positions, (c < 0).all(0).tolist()) if absent]
                if missing:
                    m = hp.state.attention_mask
                    lengths = m.sum(-1).tolist() if m is not None else [self.full.shape[1]]
                    raise UncoverError(f"{type(iv).__name__} on {iv.hook!r}: position(s) {missing} are beyond "
                                       f"every prompt (real lengths {sorted(set(lengths))})")
            ok = c >= 0
            self.empty = not bool(ok.any())
            self.rows = torch.arange(c.shape[0], device=dev)[:, None].expand_as(c)[ok]
            self.cols = c[ok]

    @property
    def whole(self) -> bool:
        """Whether the whole value is selected (no positions, no heads, no units)."""
        return self.rows is None and self.heads is None and self.units is None

    def pick(self, t: torch.Tensor) -> torch.Tensor:
        """Restrict ``t`` shaped like :attr:`full` (working layout)."""
        t = self._pick_rows_heads(t)
        return t if self.units is None else t.index_select(-1, self.units)

    def _pick_rows_heads(self, t: torch.Tensor) -> torch.Tensor:
        if self.rows is not None:
            t = t[self.rows, self.cols]  # [n, head?, ...]
            return t if self.heads is None else t.index_select(1, self.heads)
        return t if self.heads is None else t.index_select(2, self.heads)

    def select(self, t: torch.Tensor) -> torch.Tensor:
        """Restrict ``t`` (broadcastable to the hook's value, in the hook's layout)."""
        t = t.to(device=self.value.device, dtype=self.value.dtype)
        if self.units is not None and t.shape[-1] == len(self.units) != self.value.shape[-1]:
            # a tensor over the selected units only: broadcast it to the rows/heads part
            shape = (*self.value.shape[:-1], len(self.units))
            try:
                t = t.expand(shape)
            except RuntimeError as e:
                raise UncoverError(f"tensor of shape {tuple(t.shape)} does not broadcast to the {len(self.units)} "
                                   f"selected units of {self.hp.name!r}, shape {shape}") from e
            return self._pick_rows_heads(t.transpose(1, 2) if self.qk else t)
        try:
            t = t.expand_as(self.value)
        except RuntimeError as e:
            raise UncoverError(
                f"tensor of shape {tuple(t.shape)} does not broadcast to {self.hp.name!r}, "
                f"shape {tuple(self.value.shape)}"
            ) from e
        return self.pick(t.transpose(1, 2) if self.qk else t)

    def mean(self) -> torch.Tensor:
        """Mean over batch and real positions of the current forward, restricted to the selection."""
        f = self.full
        st = self.hp.state
        m = st.attention_mask
        if m is not None and m.shape[0] == f.shape[0] and m.shape[1] >= st.offset + f.shape[1]:
            w = m[:, st.offset : st.offset + f.shape[1]].to(f.device, f.dtype)  # [batch, pos], on this layer's device
            w = w.reshape(*w.shape, *([1] * (f.dim() - 2)))
            mu = (f * w).sum((0, 1)) / w.sum((0, 1)).clamp_min(1)
        else:
            mu = f.mean((0, 1))
        return self.pick(mu.expand_as(f))

    def write(self, new: torch.Tensor) -> torch.Tensor:
        """The whole value (hook layout) with the selection replaced by ``new``."""
        if self.units is not None:  # put the units back into the rows/heads part, then write that
            part = self._pick_rows_heads(self.full).clone()
            part[..., self.units] = new
            new = part
            if self.rows is None and self.heads is None:
                return part.transpose(1, 2) if self.qk else part
        if self.whole:  # a fresh tensor: never hand the model a view of a stored source
            out = new.expand_as(self.full).clone()
            return out.transpose(1, 2) if self.qk else out
        out = self.full.clone()
        if self.rows is None:
            out[:, :, self.heads] = new
        elif self.heads is None:
            out[self.rows, self.cols] = new
        else:
            sub = out[self.rows, self.cols]
            sub[:, self.heads] = new
            out[self.rows, self.cols] = sub
        return out.transpose(1, 2) if self.qk else out


def as_hook(iv: Intervention) -> HookFn:
    """A hook function applying ``iv``; values are ``[batch, pos, ...]`` (per-head: ``[batch, pos, head, ...]``,
    patterns ``[batch, head, q, k]``)."""
    check(iv)
    qk = HookName.parse(iv.hook).leaf in _QK_AXES

    def fn(value: torch.Tensor, hp: HookPoint) -> torch.Tensor | None:
        sel = Selection(iv, value, hp, qk)
        if sel.empty:
            return None
        part = sel.pick(sel.full)
        try:
            new = iv.new_value(part, sel)
        except RuntimeError as e:  # shape mismatches: say which hook and shapes
            raise UncoverError(
                f"{iv!r} failed on {hp.name!r} (value shape {tuple(value.shape)}, selected {tuple(part.shape)}): {e}"
            ) from e
        if new.shape != part.shape:
            raise UncoverError(
                f"{type(iv).__name__} on {hp.name!r} produced shape {tuple(new.shape)}, expected {tuple(part.shape)}"
            )
        return sel.write(new.to(value.dtype))

    return fn


def hooks_for(interventions: list[Intervention]) -> list[tuple[str, Callable]]:
    """``[(hook name, fn), ...]`` for a list of interventions, in order."""
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise UncoverError(f"expected Intervention values (Zero, Mean, Replace, ...), got {type(iv).__name__}")
    return [(iv.hook, as_hook(iv)) for iv in interventions]
