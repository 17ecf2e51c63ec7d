"""ActivationCache: cached hook values and the residual-stream decompositions.

``accumulated_resid`` (the residual after each layer: what the logit lens reads),
``decompose_resid`` (embed + each attention and MLP output: sums to the final
residual), ``stack_head_results`` (each head's write to the residual stream) and
``apply_ln_to_stack`` (the final norm's scale applied to a stack, as TransformerLens
does, so that components add up to the pre-unembed activations).

Some cached values are *derived* ones that the model never computes itself (``hook_resid_mid``
as ``resid_pre + attn_out``, attention scores and patterns under fused attention kernels,
per-head ``hook_result``). :class:`Recorder`, which collects a ``run_with_cache`` call, can take
them as a :class:`Lazy` recipe instead of a tensor: the value is computed, with the very
operations the hooks would have run, when it is first read. Every hook on those names must be
one of the recorder's own (a hook that could write them gets the eager value), and a recipe is
only taken when the tensors it keeps alive are no bigger than the values it replaces, so a cache
never holds more memory than before. Why: keeping hundreds of fresh tensors alive is what caching
every hook costs (each call faults its cache into new pages), and the side computation of
attention patterns was a third of that cost (BENCHMARKS.md, "Caching every hook").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from uncover.core.errors import UncoverError, UnknownHookName, did_you_mean
from uncover.core.names import act_name, head_label
from uncover.hooks.interventions import remember_padding
from uncover.hooks.pool import PoolSession, version_of

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel
    from uncover.hooks.tokens import Batch


class Stack(NamedTuple):
    """A stack of residual-stream components ``[component, batch, pos, d_model]`` and their labels."""

    tensor: torch.Tensor
    labels: list[str]


def norm_scale(x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """The divisor a norm applies to ``x`` ``[..., d_model]``: ``[..., 1]`` (float32).

    RMSNorm: ``sqrt(mean(x²) + eps)``; LayerNorm: ``sqrt(var(x) + eps)``.
    """
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    if kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


class Lazy:
    """A recipe for cached values not computed yet: ``compute(*inputs)`` gives ``{name: tensor}``.

    ``inputs`` are the tensors the recipe reads (kept alive until it runs; ``None`` entries are passed
    as they are). The recipe gets them as arguments, so a recorder can hand it its own copies. Their in-place
    modification counters are recorded, so a recipe whose inputs were changed in place (a cached
    tensor edited before its derived values were read) refuses instead of computing a wrong value.
    One recipe can give several names (a layer's scores and pattern), computed together once.
    """

    def __init__(self, compute: Callable[..., dict[str, torch.Tensor]], inputs: Sequence[torch.Tensor | None],
                 device: torch.device | str | None = None):
        self.compute = compute
        self.inputs = tuple(inputs)
        self.versions = tuple(None if t is None else version_of(t) for t in self.inputs)
        self.device = device

    def __call__(self) -> dict[str, torch.Tensor]:
        for t, v in zip(self.inputs, self.versions):
            if v is not None and t is not None and version_of(t) != v:
                raise UncoverError(
                    "a cached value was modified in place before the values derived from it were read; read "
                    "them first (or change a .clone() of the cached value)"
                )
        with torch.no_grad():  # as during the forward pass (and inference tensors may be read outside one)
            out = self.compute(*self.inputs)
        return out if self.device is None else {n: v.to(self.device) for n, v in out.items()}


class Recorder:
    """Collects the values of one ``run_with_cache`` call: tensors, or :class:`Lazy` recipes.

    ``saver(name)`` is the hook function that stores ``name``; the hook engine, where it would
    compute a value only to show it to hooks, offers the recipe instead (:meth:`defer`) when every
    hook there is a saver of this recorder.
    """

    def __init__(self, device: torch.device | str | None = None, pool: PoolSession | None = None):
        self.store: dict[str, torch.Tensor] = {}
        self.pending: dict[str, Lazy] = {}
        self.device = device
        self.pool = pool if device is None else None
        """Where values are kept: copied into buffers of dropped caches when it has some (``hooks/pool.py``)."""
        self._held: set[tuple[str, int]] = set()
        """Storages the cache keeps alive (stored values and recipe inputs)."""
        self._formulas: dict[str, tuple[tuple[str, ...], Callable[..., torch.Tensor], dict, object]] = {}

    def formula(self, name: str, inputs: Sequence[str], fn: Callable[..., torch.Tensor], checked: dict,
                key: object) -> None:
        """Keep ``name`` as the recipe ``fn(*cached inputs)`` instead of its value, where that formula holds.

        For a value the model computes itself from cached ones (``mlp.hook_post`` = ``act(hook_pre) *
        hook_pre_linear``). ``checked[key]`` records whether ``fn`` reproduced the model's value bit for bit
        the first time it was seen (``key`` names the modules involved); a formula that did not is not used.
        Only for names no other hook can write in this call (the caller checks).
        """
        self._formulas[name] = (tuple(inputs), fn, checked, key)

    def saver(self, name: str) -> Callable[[torch.Tensor, Any], None]:
        """The hook function storing ``name`` (detached, moved to ``device`` if one was given)."""
        return _Saver(self, name)

    def put(self, name: str, v: torch.Tensor, reuse: bool = True) -> None:
        """Store ``name``'s value (in a pooled buffer unless ``reuse`` is false), or its formula's recipe."""
        if name in self._formulas and self._by_formula(name, v.detach()):
            return
        v = v.detach()
        if self.device is not None:
            v = v.to(self.device)
        elif reuse:
            v = self._keep(v)
        self.store[name] = v
        self.pending.pop(name, None)
        self._held.add(_storage_key(v))

    def _by_formula(self, name: str, v: torch.Tensor) -> bool:
        inputs, fn, checked, key = self._formulas[name]
        xs = [self.store.get(n) for n in inputs]
        if self.device is not None or any(x is None for x in xs):
            return False
        if key not in checked:  # first sight of these modules: the formula must give exactly the model's value
            checked[key] = bool(torch.equal(fn(*xs), v))
        if not checked[key]:
            return False
        self.pending[name] = Lazy(lambda *xs: {name: fn(*xs)}, xs)
        return True

    def _keep(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return t if t is None or self.pool is None else self.pool.keep(t)

    def defer(self, names: Sequence[str], compute: Callable[..., dict[str, torch.Tensor]],
              inputs: Sequence[torch.Tensor | None], nbytes: int) -> bool:
        """Take ``names`` as the recipe ``compute(*inputs)``, if that keeps no more memory alive than ``nbytes``
        (what the eager values would take). Returns whether it did; if not, the hooks get the values."""
        new: dict[tuple[str, int], int] = {}
        for t in inputs:
            if t is None:
                continue
            if self.device is not None and t.device != torch.device(self.device):
                return False  # the cache was asked to live elsewhere: don't keep tensors here
            copy = self.pool.kept(t) if self.pool is not None else None  # a value stored already: its copy
            t = t if copy is None else copy
            key = _storage_key(t)
            if key not in self._held:
                new[key] = t.untyped_storage().nbytes()
        if sum(new.values()) > nbytes:
            return False
        inputs = [self._keep(t) for t in inputs]
        self._held.update(_storage_key(t) for t in inputs if t is not None)
        lazy = Lazy(compute, inputs)
        for n in names:
            self.pending[n] = lazy
        return True


class _Saver:
    """A hook function that stores its value in a :class:`Recorder` (and can take recipes instead)."""

    def __init__(self, recorder: Recorder, name: str):
        self.defers_to = recorder
        self.name = name

    def __call__(self, v: torch.Tensor, hp: Any) -> None:
        self.defers_to.put(self.name, v)


class ActivationCache(Mapping[str, torch.Tensor]):
    """Mapping from hook name to tensor, plus the batch it came from.

    Derived values (``hook_result``, and under ``names=None`` ``hook_resid_mid``, scores and
    patterns) may be held as recipes and computed on first access; ``in``, ``len``, iteration
    (in forward order) and ``cache[name]`` treat them like any other name.

    >>> logits, cache = model.run_with_cache("Hi there")
    >>> resid, labels = cache.accumulated_resid()
    """

    def __init__(
        self,
        store: dict[str, torch.Tensor],
        model: HookedModel,
        batch: Batch,
        pending: dict[str, Lazy] | None = None,
    ):
        self.store = store
        self.model = model
        self.batch = batch
        self.pending = pending or {}
        """Names not computed yet, mapped to the :class:`Lazy` recipe that gives them."""
        rank = {n: i for i, n in enumerate(model.hook_names())}
        self._order = sorted([*store, *self.pending], key=lambda n: rank.get(n, len(rank)))

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            v = self.store[name]
            remember_padding(v, self.batch.attention_mask)  # a Replace made from it checks the padding it patches
            return v
        except KeyError:
            lazy = self.pending.get(name)
            if lazy is not None:
                for n, v in lazy().items():
                    if self.pending.get(n) is lazy:  # a recipe fills every name it gives that is still pending
                        self.store[n] = v
                        del self.pending[n]
                return self[name]
            if name in self.model.hook_names():
                raise UnknownHookName(f"{name!r} was not cached; pass it in names= to run_with_cache") from None
            valid = list(self) or self.model.hook_names()
            raise UnknownHookName(did_you_mean(name, valid, "hook name")) from None

    def __contains__(self, name: object) -> bool:
        return name in self.store or name in self.pending

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self.store) + len(self.pending)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} hooks, batch={tuple(self.batch.input_ids.shape)})"

    # ---- residual stream ------------------------------------------------------------------
    def final_resid(self) -> torch.Tensor:
        """The residual stream entering the final norm: ``[batch, pos, d_model]``."""
        return self[act_name("resid_post", self.model.cfg.n_layers - 1)]

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False) -> Stack:
        """Residual stream before each layer up to ``layer`` (default: all, plus the final one).

        Returns ``[layer + 1, batch, pos, d_model]`` with labels ``0_pre``, (``0_mid``), ...,
        ``final_post``.
        """
        n = self.model.cfg.n_layers
        upto = n if layer is None else layer
        parts, labels = [], []
        for i in range(min(upto, n)):
            parts.append(self[act_name("resid_pre", i)])
            labels.append(f"{i}_pre")
            if incl_mid:
                parts.append(self[act_name("resid_mid", i)])
                labels.append(f"{i}_mid")
        if layer is None or layer >= n:
            parts.append(self.final_resid())
            labels.append("final_post")
        else:
            parts.append(self[act_name("resid_pre", layer)])
            labels.append(f"{layer}_pre")
        return Stack(torch.stack(parts), labels)

    def decompose_resid(self, layer: int | None = None) -> Stack:
        """Embedding, then each attention and MLP output before ``layer`` (default: all).

        The components sum to the residual stream at that point.
        Returns ``[component, batch, pos, d_model]`` and labels (``embed``, ``pos_embed``,
        ``0_attn_out``, ``0_mlp_out``, ...).
        """
        n = self.model.cfg.n_layers if layer is None else layer
        embed = self["hook_embed"]
        parts, labels = [embed], ["embed"]
        if "hook_pos_embed" in self.model.hook_names():
            parts.append(self["hook_pos_embed"].expand_as(embed))  # [1, pos, d] broadcasts over the batch
            labels.append("pos_embed")
        for i in range(n):
            for kind in ("attn_out", "mlp_out"):
                parts.append(self[act_name(kind, i)])
                labels.append(f"{i}_{kind}")
        return Stack(torch.stack(parts), labels)

    def head_results(self, layer: int) -> torch.Tensor:
        """Each head's write to the residual stream at ``layer``: ``[batch, pos, head, d_model]``.

        From ``hook_result`` if cached, else from ``hook_z`` and ``W_O``. With post-attention
        norms (Gemma 2/3) each head's output is multiplied by that norm's weight and divided by
        its scale, so the heads still sum to ``hook_attn_out`` (minus the bias, when present).
        """
        m = self.model
        name = act_name("result", layer)
        if name in self:
            res = self[name]
        else:
            z = self[act_name("z", layer)]  # [batch, pos, head, d_head]
            res = torch.einsum("bphd,hdm->bphm", z, m.W_O(layer).to(z))
        post = m.adapter.family.attn_post_norm
        if post is not None:
            mod = m.norm(layer, "attn_post")
            w, _, eps = m.adapter.norm_params(mod)
            b_o = m.adapter.b_O(layer)
            total = res.sum(-2) + (0 if b_o is None else b_o.to(res.device))
            scale = norm_scale(total, m.cfg.norm_kind, eps).unsqueeze(-2)  # [b, p, 1, 1]
            res = (res.float() / scale * w.float().to(res.device)).to(res.dtype)
        return res

    def stack_head_results(self, layer: int | None = None) -> Stack:
        """Every head's write to the residual stream for layers before ``layer`` (default: all).

        Returns ``[layer * n_heads, batch, pos, d_model]`` with labels ``L{l}H{h}``. Attention
        output biases are not included (see :meth:`attn_biases`).
        """
        n = self.model.cfg.n_layers if layer is None else layer
        parts, labels = [], []
        for i in range(n):
            r = self.head_results(i)
            for h in range(r.shape[-2]):
                parts.append(r[..., h, :])
                labels.append(head_label(i, h))
        return Stack(torch.stack(parts), labels)

    def apply_ln_to_stack(self, stack: torch.Tensor, pos_slice: slice | None = None) -> torch.Tensor:
        """Apply the final norm's (frozen) scale to each component of ``stack``.

        ``stack`` is ``[component, batch, pos, d_model]``. LayerNorm components are centred.
        The norm's weight is not applied (fold it into ``W_U``); the result summed over
        components equals the final normalized residual divided by the weight, minus the bias.
        """
        m = self.model
        _, _, eps = m.adapter.norm_params(m.adapter.final_norm())
        x = self.final_resid()
        scale = norm_scale(x, m.cfg.norm_kind, eps)  # [batch, pos, 1]
        if pos_slice is not None:
            scale = scale[:, pos_slice]
        s = stack.to(torch.promote_types(stack.dtype, torch.float32))
        if m.cfg.norm_kind == "layer":
            s = s - s.mean(-1, keepdim=True)
        return s / scale
