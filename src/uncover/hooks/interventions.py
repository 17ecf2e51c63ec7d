"""Interventions as values.

Each intervention is a frozen dataclass bound to one hook name with optional
positions (real-token positions, negative from each prompt's end) and heads. They
print, compare and serialize (``to_dict``/``from_dict``), and are applied only inside
``with model.intervene([...]):``, which restores the model on exit.

Kinds: :class:`Zero`, :class:`Mean`, :class:`Replace`, :class:`Add`,
:class:`Project`, :class:`Ablate`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import HookName

if TYPE_CHECKING:
    from uncover.hooks.apply import Selection


_PADDING: dict[int, tuple[weakref.ref, torch.Tensor]] = {}


def remember_padding(t: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """Note which batch padding ``t`` (a cached value) came from, so a :class:`Replace` built from it can check
    that it patches a batch padded the same way. Forgotten when ``t`` dies.

    >>> t = torch.zeros(2, 3)
    >>> remember_padding(t, torch.tensor([[1, 1, 1], [0, 1, 1]]))
    >>> padding_of(t).tolist()
    [[1, 1, 1], [0, 1, 1]]
    """
    if attention_mask is None or id(t) in _PADDING and _PADDING[id(t)][0]() is t:
        return
    key = id(t)
    _PADDING[key] = (weakref.ref(t, lambda _: _PADDING.pop(key, None)), attention_mask)


def padding_of(t: Any) -> torch.Tensor | None:
    """The attention mask ``[batch, pos]`` recorded by :func:`remember_padding` for this very tensor, or ``None``."""
    entry = _PADDING.get(id(t))
    return entry[1] if entry is not None and entry[0]() is t else None


def _tensor_field(x: Any, what: str, allow_inf: bool = False) -> torch.Tensor:
    """A private float copy of ``x`` (lists become float32), so the value cannot change under us."""
    if isinstance(x, dict) and "data" in x:  # to_dict form of a non-float32 tensor
        return torch.tensor(x["data"], dtype=getattr(torch, x.get("dtype", "float32")))
    try:
        t = x.detach().clone() if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UncoverError(f"{what} must be a tensor or a (nested) list of numbers, got {type(x).__name__}") from e
    if not t.is_floating_point():
        t = t.float()
    if bool(torch.isnan(t).any()) or (not allow_inf and not bool(torch.isfinite(t).all())):
        raise UncoverError(f"{what} holds NaN{'' if allow_inf else ' or infinite'} values")
    return t


def _int_tuple(v: Any, what: str) -> tuple[int, ...] | None:
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        v = v.flatten().tolist()
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,)
    if isinstance(v, Sequence) and not isinstance(v, str) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in v
    ):
        if not v:
            raise UncoverError(f"{what}=[] selects nothing; use None for all")
        return tuple(v)
    raise UncoverError(f"{what} must be an int, a sequence of ints or None, got {v!r}")


def _tensor_key(t: torch.Tensor) -> tuple:
    return ("tensor", tuple(t.shape), tuple(t.flatten().tolist()))


@dataclass(frozen=True, eq=False)
class Intervention:
    """Base class: a change to the value at ``hook`` (at ``positions``, ``heads`` and ``units``).

    ``positions`` are real-token positions (``-1``: each prompt's last real token, whatever
    the padding), ``heads`` index the head axis of per-head hooks (``attn.hook_q/k/v`` index
    key/value heads under grouped-query attention), ``units`` index the last axis (neurons of
    ``mlp.hook_post``, dimensions of the residual stream, SAE latents of an attached SAE).

    >>> Zero("blocks.3.mlp.hook_post", positions=[-1], units=[5, 17])
    Zero(hook='blocks.3.mlp.hook_post', positions=(-1,), heads=None, units=(5, 17))
    """

    hook: str
    positions: tuple[int, ...] | None = field(default=None, kw_only=True)
    heads: tuple[int, ...] | None = field(default=None, kw_only=True)
    units: tuple[int, ...] | None = field(default=None, kw_only=True)
    kind: ClassVar[str] = "intervention"

    def __post_init__(self) -> None:
        if not isinstance(self.hook, str):
            raise UncoverError(f"hook must be a hook name string, got {type(self.hook).__name__}")
        object.__setattr__(self, "positions", _int_tuple(self.positions, "positions"))
        object.__setattr__(self, "heads", _int_tuple(self.heads, "heads"))
        object.__setattr__(self, "units", _int_tuple(self.units, "units"))
        if self.heads is not None and not HookName.parse(self.hook).per_head:
            raise UncoverError(
                f"{type(self).__name__} on {self.hook!r} names heads, but that hook has no head axis; "
                "use an attn.hook_q/k/v/z/pattern/attn_scores/result hook"
            )

    def new_value(self, value: torch.Tensor, sel: Selection) -> torch.Tensor:
        """The replacement for ``value``: the part of the hook value at this intervention's
        positions/heads (``[batch, pos, ...]`` or, with positions, ``[n, ...]``).

        ``sel.select(t)`` restricts a tensor broadcastable to the hook value the same way;
        ``sel.mean()`` is the (restricted) mean over the batch and real positions."""
        raise NotImplementedError

    # equality and hashing that understand tensors
    def _key(self) -> tuple:
        out: list[Any] = [type(self).__name__]
        for f in fields(self):
            v = getattr(self, f.name)
            out.append(_tensor_key(v) if isinstance(v, torch.Tensor) else v)
        return tuple(out)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (float32 tensors become nested lists, others ``{"dtype", "data"}``).

        >>> Zero("blocks.0.hook_mlp_out", positions=[-1]).to_dict()
        {'kind': 'Zero', 'hook': 'blocks.0.hook_mlp_out', 'positions': [-1], 'heads': None, 'units': None}
        """
        d: dict[str, Any] = {"kind": type(self).__name__}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.tolist() if v.dtype == torch.float32 else {"dtype": str(v.dtype)[6:], "data": v.tolist()}
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Intervention:
        """Inverse of :meth:`to_dict`.

        >>> i = Add("hook_embed", vector=[1.0, 2.0], scale=0.5)
        >>> Intervention.from_dict(i.to_dict()) == i
        True
        """
        d = dict(d)
        kinds = {c.__name__: c for c in KINDS}
        kind = d.pop("kind", None)
        if kind not in kinds:
            raise UncoverError(f"unknown intervention kind {kind!r}; valid: {', '.join(kinds)}")
        cls = kinds[kind]
        names = {f.name for f in fields(cls)}
        extra = sorted(set(d) - names)
        if extra:
            raise UncoverError(f"{kind} has no field(s) {', '.join(extra)}; valid: {', '.join(sorted(names))}")
        return cls(**d)


def _direction(x: Any, kind: str) -> torch.Tensor:
    u = _tensor_field(x, "direction")
    if u.dim() != 1:
        raise UncoverError(f"{kind} direction must be one vector [d], got shape {tuple(u.shape)}")
    if not bool(torch.isfinite(u).all()) or float(u.norm()) == 0.0:
        raise UncoverError(f"{kind} direction must be finite and non-zero")
    return u


def _along(iv: Project | Ablate, value: torch.Tensor) -> torch.Tensor:
    """The component of ``value`` (``[..., d]``) along ``iv.direction``: ``(v·u) u``."""
    u = iv.direction.to(value)
    if u.shape[0] != value.shape[-1]:
        raise UncoverError(
            f"{type(iv).__name__} direction has {u.shape[0]} entries but {iv.hook!r} values have {value.shape[-1]}"
        )
    u = u / u.norm()
    return (value @ u).unsqueeze(-1) * u


@dataclass(frozen=True, eq=False)
class Zero(Intervention):
    """Set the value to zero (zero ablation).

    >>> Zero("blocks.0.attn.hook_z", heads=[1])
    Zero(hook='blocks.0.attn.hook_z', positions=None, heads=(1,), units=None)
    """

    def new_value(self, value: torch.Tensor, sel: Selection) -> torch.Tensor:
        return torch.zeros_like(value)


@dataclass(frozen=True, eq=False)
class Mean(Intervention):
    """Replace by a mean value (mean ablation); ``mean`` broadcasts against the value.

    Without ``mean`` the mean over the batch and the real (non-padding) positions of the
    current input is used (per head for per-head hooks).
    """

    mean: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mean is not None:
            object.__setattr__(self, "mean", _tensor_field(self.mean, "mean"))

    def new_value(self, value: torch.Tensor, sel: Selection) -> torch.Tensor:
        return sel.mean() if self.mean is None else sel.select(self.mean)


@dataclass(frozen=True, eq=False)
class Replace(Intervention):
    """Replace by ``source`` (activation patching): a tensor broadcastable to the value.

    ``source`` is usually a cached activation of another run at the same hook,
    ``[batch, pos, ...]`` (it broadcasts against the hook value, in the hook's layout); it
    is restricted to the same positions/heads as the value.
    """

    source: torch.Tensor = None  # type: ignore[assignment]
    source_mask: torch.Tensor | None = field(default=None, kw_only=True, repr=False)
    """The attention mask ``[batch, pos]`` of the batch ``source`` was cached from (taken by itself when
    ``source`` is a value read from an :class:`~uncover.hooks.cache.ActivationCache`): patching a batch padded
    otherwise is refused, since it would put padding where real tokens are and the other way round."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source is None:
            raise UncoverError("Replace needs a source tensor (for example a cached activation)")
        mask = padding_of(self.source) if self.source_mask is None else self.source_mask
        # -inf is meaningful in attention scores; NaN never is
        object.__setattr__(self, "source", _tensor_field(self.source, "source", allow_inf=True))
        if mask is not None:
            if isinstance(mask, dict) and "data" in mask:  # to_dict form
                mask = mask["data"]
            mask = torch.as_tensor(mask).detach().clone()
            if mask.dim() != 2 or mask.is_floating_point() and not bool(((mask == 0) | (mask == 1)).all()):
                raise UncoverError(f"source_mask must be an attention mask [batch, pos] of 0/1, got shape "
                                   f"{tuple(mask.shape)}")
            object.__setattr__(self, "source_mask", mask.long())

    def new_value(self, value: torch.Tensor, sel: Selection) -> torch.Tensor:
        if self.source_mask is not None:
            _same_padding(self, sel)
        return sel.select(self.source)


def _same_padding(iv: Replace, sel: Selection) -> None:
    """Refuse a source whose prompts were padded otherwise than this forward pass's (same shape, other padding)."""
    src = iv.source_mask
    st = sel.hp.state
    tgt = st.attention_mask
    rows = sel.full.shape[0]
    if tgt is None:
        tgt = torch.ones(rows, src.shape[-1], dtype=torch.long)
    if src.shape[-1] != tgt.shape[-1] or src.shape[0] not in (1, tgt.shape[0]):
        return  # other lengths or batches: the source does not broadcast, which select() reports
    src, tgt = src.to(tgt.device).bool().expand(tgt.shape), tgt.bool()
    if not torch.equal(src, tgt):
        raise UncoverError(
            f"Replace on {iv.hook!r}: the source was cached from prompts padded otherwise than this batch (real "
            f"lengths {src.sum(-1).tolist()} against {tgt.sum(-1).tolist()}); patching it would mix padding and "
            "real tokens. Cache the source from prompts of the same token lengths, or patch one pair at a time"
        )


@dataclass(frozen=True, eq=False)
class Add(Intervention):
    """Add ``scale * vector`` (activation addition / steering).

    ``vector`` is usually ``[d]``; anything that broadcasts against the hook value works
    (``[head, d_head]`` for per-head hooks, ``[pos, d]`` ...).
    """

    vector: torch.Tensor = None  # type: ignore[assignment]
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vector is None:
            raise UncoverError("Add needs a vector")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float) or not math.isfinite(self.scale):
            raise UncoverError(f"scale must be a finite number, got {self.scale!r}")
        object.__setattr__(self, "vector", _tensor_field(self.vector, "vector", allow_inf=True))  # -inf masks scores

    def new_value(self, value: torch.Tensor, sel: Selection) -> torch.Tensor:
        return value + self.scale * sel.select(self.vector)


@dataclass(frozen=True, eq=False)
class Project(Intervention):
    """Keep only the component along ``direction`` (``[d]``): ``(v·u) u`` with unit ``u``."""

    direction: torch.Tensor = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction is None:
            raise UncoverError("Project needs a direction")
        object.__setattr__(self, "direction", _direction(self.direction, "Project"))

    def new_value(self, value: torch.Tensor, sel: Selection) -> torch.Tensor:
        return _along(self, value)


@dataclass(frozen=True, eq=False)
class Ablate(Intervention):
    """Remove the component along ``direction`` (directional ablation): ``v - (v·u) u``."""

    direction: torch.Tensor = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction is None:
            raise UncoverError("Ablate needs a direction")
        object.__setattr__(self, "direction", _direction(self.direction, "Ablate"))

    def new_value(self, value: torch.Tensor, sel: Selection) -> torch.Tensor:
        return value - _along(self, value)


KINDS: tuple[type[Intervention], ...] = (Zero, Mean, Replace, Add, Project, Ablate)
"""Every intervention kind, for ``from_dict``."""
