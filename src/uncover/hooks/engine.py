"""Attach hook functions to the HF module tree for the length of a ``with`` block.

:class:`Attachment` groups the requested names by module, registers one PyTorch hook
per module and direction, and removes every hook (and restores the attention
implementation) in ``finally``. A hook function receives ``(value, hook)`` and returns
``None`` (no change) or a tensor of the same shape; returning the value itself also
means "no change", so reading hooks leave the computation bit-identical.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from uncover.core.names import HookName
from uncover.hooks import attention
from uncover.hooks.tokens import Positions, position_columns

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]


@dataclass
class ForwardState:
    """What the current forward pass looks like (for position addressing and ``resid_mid``)."""

    attention_mask: torch.Tensor | None = None
    """``[batch, past + pos]`` mask of the current forward, or ``None`` (all real)."""
    offset: int = 0
    """Number of cached (past) columns before this forward's first column."""
    q_len: int = 0
    batch: int = 0
    stash: dict[int, torch.Tensor] = field(default_factory=dict)

    def columns(self, positions: Positions, device: torch.device) -> torch.Tensor:
        """``[batch, k]`` columns in this forward of real-token ``positions`` (``-1`` if absent)."""
        mask = self.attention_mask
        if mask is None:
            mask = torch.ones(self.batch, self.offset + self.q_len, dtype=torch.long, device=device)
        return position_columns(mask.to(device), positions, self.offset, self.q_len)


@dataclass
class HookPoint:
    """Passed to hook functions: the hook's name and the current forward's state."""

    name: str
    state: ForwardState

    @property
    def layer(self) -> int | None:
        return HookName.parse(self.name).layer


def _changed(new: torch.Tensor | None, old: torch.Tensor) -> bool:
    return new is not None and new is not old


def _here(new: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``new`` on ``like``'s device: a hook may return a tensor from elsewhere (a layer on another GPU)."""
    return new if new.device == like.device else new.to(like.device)


class Attachment:
    """Context manager that attaches ``[(name, fn), ...]`` to a :class:`HookedModel`."""

    def __init__(self, hm: HookedModel, hooks: Sequence[tuple[str, HookFn]]):
        self.hm = hm
        self.hooks = [(name, hm.site(name), fn) for name, fn in hooks]
        self.handles: list[Any] = []
        self.attn_lists: list[tuple[nn.Module, list]] = []
        self.saved_impl: list[tuple[Any, str]] = []

    def __enter__(self) -> Attachment:
        try:
            self._attach()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._detach()

    # ------------------------------------------------------------------------------------
    def _attach(self) -> None:
        hm, a = self.hm, self.hm.adapter
        state = hm.state
        self.handles.append(hm.model.register_forward_pre_hook(self._root_pre, with_kwargs=True))
        groups: dict[tuple[int, str], tuple[nn.Module, list]] = {}
        mid_layers: set[int] = set()
        for order_i, (name, site, fn) in enumerate(self.hooks):
            direction = {"in": "in", "attnfn": "attnfn"}.get(site.kind, "out")
            key = (id(site.module), direction)
            groups.setdefault(key, (site.module, []))[1].append((site.order, order_i, name, site, fn))
            if site.kind == "mid":
                mid_layers.add(HookName.parse(name).layer)  # type: ignore[arg-type]
        for layer in sorted(mid_layers):
            # resid_mid = resid_pre + attention output; resid_pre is read where the block really
            # uses it (the input of ln1), after every hook on the block input, whichever
            # attachment registered it
            ln1 = a.sub(layer, a.family.ln1) or a.attn(layer)  # no pre-norm (OLMo 2): the attention's input
            self.handles.append(ln1.register_forward_pre_hook(_stash_hook(state, layer), with_kwargs=True))
        for (_, direction), (module, items) in groups.items():
            items.sort(key=lambda x: (x[0], x[1]))
            entries = [(n, s, f, HookPoint(n, state)) for _, _, n, s, f in items]
            if direction == "in":
                self.handles.append(module.register_forward_pre_hook(_pre_hook(entries), with_kwargs=True))
            elif direction == "out":
                self.handles.append(module.register_forward_hook(_fwd_hook(entries, state, a)))
            else:
                self._attach_attention(module, entries)

    def _attach_attention(self, module: nn.Module, entries: list) -> None:
        lst = getattr(module, "_uncover_attn_entries", None)
        if lst is None:
            lst = []
            module._uncover_attn_entries = lst  # type: ignore[attr-defined]
            setattr(module, attention.ATTR, _attn_callable(lst))
        lst.extend(entries)
        self.attn_lists.append((module, entries))
        if not self.saved_impl:
            attn_modules = [self.hm.adapter.attn(i) for i in range(self.hm.cfg.n_layers)]
            for cfg in attention.configs_of(self.hm.model, attn_modules):
                impl = cfg._attn_implementation or "eager"
                self.saved_impl.append((cfg, cfg._attn_implementation_internal))
                cfg._attn_implementation_internal = attention.wrapped_name(impl)

    def _detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for module, entries in self.attn_lists:
            lst = module._uncover_attn_entries
            for e in entries:
                lst.remove(e)
            if not lst:
                del module._uncover_attn_entries
                delattr(module, attention.ATTR)
        self.attn_lists.clear()
        for cfg, impl in reversed(self.saved_impl):
            cfg._attn_implementation_internal = impl
        self.saved_impl.clear()

    def _root_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        st = self.hm.state
        if args:  # positional arguments follow each model's own signature (GPT-2 puts the cache second)
            kwargs = {**dict(zip(_positional_names(module), args)), **kwargs}
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        st.batch, st.q_len = int(ids.shape[0]), int(ids.shape[1])
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        st.offset = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        mask = kwargs.get("attention_mask")
        st.attention_mask = mask if mask is not None and mask.dim() == 2 else None
        st.stash.clear()


def _positional_names(module: nn.Module) -> list[str]:
    """Names of ``module.forward``'s positional parameters, in order."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(module.forward).parameters.values() if p.kind in kinds]


def _stash_hook(state: ForwardState, layer: int) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        state.stash[layer] = args[0] if args else kwargs["hidden_states"]

    return hook


def _pre_hook(entries: list) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
        positional = bool(args)
        t = args[0] if positional else kwargs["hidden_states"]
        t0 = t
        for _, site, fn, hp in entries:
            v = site.extract(t)
            new = fn(v, hp)
            if _changed(new, v):
                t = site.insert(t, _here(new, v))
        if t is t0:
            return None
        if positional:
            return (t, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": t}

    return hook


def _fwd_hook(entries: list, state: ForwardState, adapter: Any) -> Callable:
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        is_tuple = isinstance(output, tuple)
        t = output[0] if is_tuple else output
        t0 = t
        result: torch.Tensor | None = None
        rest = None  # recomputes the rest of a tuple output from a written first element (re-routing)
        for entry in entries:
            _, site, fn, hp = entry
            if site.kind == "out":
                v = site.extract(t)
                new = fn(v, hp)
                if _changed(new, v):
                    t = site.insert(t, _here(new, v))
                    rest = site.rest or rest
            elif site.kind == "mid":
                pre = _here(state.stash[hp.layer], t)
                attn = site.extract(t)  # (Granite's residual multiplier is in extract/insert)
                if _defer([entry], _adder(hp.name), [pre, attn], pre.nbytes):
                    continue
                mid = pre + attn
                new = fn(mid, hp)
                if _changed(new, mid):
                    t = site.insert(t, _here(new, mid) - pre)
            elif site.kind == "experts":  # each expert's weighted output, [batch, pos, expert, d_model]
                x, index, weights = args[0], args[1], args[2]
                per = adapter.expert_outputs(hp.layer, x, index, weights)
                per = per.view(state.batch, -1, adapter.cfg.n_experts, t.shape[-1])
                new = fn(per, hp)
                if _changed(new, per):
                    if new.shape != per.shape:
                        raise ValueError(f"hook returned shape {tuple(new.shape)}, expected {tuple(per.shape)}")
                    t = _here(new, per).sum(-2).reshape(t.shape).to(t.dtype)
            else:  # result: per-head outputs in the residual basis, [batch, pos, head, d_model]
                layer = hp.layer
                if result is None:  # computed once, so that several hooks on it compose
                    z = args[0]
                    w_o = adapter.W_O(layer)  # [head, d_head, d_model]
                    b_o = adapter.b_O(layer)
                    zh = z.view(*z.shape[:-1], w_o.shape[0], w_o.shape[1])
                    result = torch.einsum("bphd,hdm->bphm", zh, w_o.to(z.device, z.dtype))
                new = fn(result, hp)
                if _changed(new, result):
                    if new.shape != result.shape:
                        raise ValueError(f"hook returned shape {tuple(new.shape)}, expected {tuple(result.shape)}")
                    result = new = _here(new, result)
                    t = site.insert(t, new.sum(-2) if b_o is None else new.sum(-2) + b_o.to(new.device))
        t = _here(t, t0)
        if t is t0:
            return None
        if is_tuple and rest is not None:
            return (t, *rest(t))
        return (t, *output[1:]) if is_tuple else t

    return hook


def _defer(entries: list, compute: Callable[[], dict[str, torch.Tensor]], inputs: list[torch.Tensor],
           nbytes: int) -> bool:
    """Offer a value that would be computed only to be shown to ``entries`` as a recipe instead.

    Taken only when every hook there is a saver of one ``cache.Recorder`` (so none can write the
    value) and the recorder agrees (what the recipe keeps alive is no bigger than ``nbytes``, the
    eager values). ``compute()`` must run the same operations as the eager path: values are bit-identical.
    """
    owners = {id(o): o for o in (getattr(e[2], "defers_to", None) for e in entries)}
    if len(owners) != 1 or None in owners.values():
        return False
    (owner,) = owners.values()
    return bool(owner.defer([e[3].name for e in entries], compute, inputs, nbytes))


def _adder(name: str) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """``resid_mid`` as a recipe of ``(resid_pre, attn_out)``: the same addition as the eager path."""
    return lambda pre, attn: {name: pre + attn}


def _attn_callable(entries: list) -> Callable:
    def defer(scores: Callable[..., torch.Tensor], inputs: list[torch.Tensor | None]) -> bool:
        """Scores and pattern as one recipe of the attention's inputs ``[q, k, mask, sinks]``.

        ``q`` ``[batch, head, q, d_head]`` and ``k`` ``[batch, kv_head, k, d_head]`` are post-rotary; ``mask`` and
        ``sinks`` may be ``None``; ``scores(q, k, mask)`` gives ``[batch, head, q, k]``.
        """
        names = [(site.order, hp.name) for _, site, _, hp in entries]  # now: entries change when hooks detach
        q, k = inputs[0], inputs[1]
        nbytes = len(names) * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.element_size()

        def compute(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None,
                    sinks: torch.Tensor | None) -> dict[str, torch.Tensor]:
            s = scores(q, k, mask)  # [batch, head, q, k]
            out = {n: s for o, n in names if o == 0}
            if any(o == 1 for o, _ in names):
                p = attention.pattern_from_scores(s, sinks)
                out.update({n: p for o, n in names if o == 1})
            return out

        return _defer(list(entries), compute, inputs, nbytes)

    def run(scores: torch.Tensor, sinks: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
        changed = False
        for _, site, fn, hp in entries:
            if site.order == 0:
                new = fn(scores, hp)
                if _changed(new, scores):
                    scores, changed = site.insert(scores, _here(new, scores)), True
        pattern = attention.pattern_from_scores(scores, sinks)
        for _, site, fn, hp in entries:
            if site.order == 1:
                new = fn(pattern, hp)
                if _changed(new, pattern):
                    pattern, changed = site.insert(pattern, _here(new, pattern)), True
        return pattern, changed

    run.defer = defer  # type: ignore[attr-defined]
    return run
