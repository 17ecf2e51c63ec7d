"""Interventions as values.

Each intervention is a frozen dataclass bound to one hook name with optional
positions (real-token positions, negative from each prompt's end) and heads. They
print, compare and serialize (``to_dict``/``from_dict``), and are applied only inside
``with model.intervene([...]):``, which restores the model on exit.

Kinds: :class:`Zero`, :class:`Mean`, :class:`Replace`, :class:`Add`,
:class:`Project`, :class:`Ablate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from uncover.core.errors import UncoverError

Selector = Callable[[torch.Tensor], torch.Tensor]


def _tensor_field(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class Intervention:
    """Base class: a change to the value at ``hook`` (at ``positions`` and ``heads``)."""

    hook: str
    positions: tuple[int, ...] | None = field(default=None, kw_only=True)
    heads: tuple[int, ...] | None = field(default=None, kw_only=True)
    kind: ClassVar[str] = "intervention"

    def __post_init__(self) -> None:
        for name in ("positions", "heads"):
            v = getattr(self, name)
            if isinstance(v, int):
                object.__setattr__(self, name, (v,))
            elif v is not None:
                object.__setattr__(self, name, tuple(int(i) for i in v))

    def new_value(self, value: torch.Tensor, full: torch.Tensor, select: Selector) -> torch.Tensor:
        """The replacement for ``value``, the part of ``full`` at this intervention's
        positions/heads; ``select`` restricts any tensor shaped like ``full`` the same way."""
        raise NotImplementedError

    # equality and hashing that understand tensors
    def _key(self) -> tuple:
        out = [type(self).__name__]
        for f in fields(self):
            v = getattr(self, f.name)
            out.append(tuple(v.flatten().tolist()) + tuple(v.shape) if isinstance(v, torch.Tensor) else v)
        return tuple(out)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tensors become nested lists).

        >>> Zero("blocks.0.hook_mlp_out", positions=[-1]).to_dict()
        {'kind': 'Zero', 'hook': 'blocks.0.hook_mlp_out', 'positions': [-1], 'heads': None}
        """
        d: dict[str, Any] = {"kind": type(self).__name__}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.tolist()
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
        kinds = {c.__name__: c for c in (Zero, Mean, Replace, Add, Project, Ablate)}
        kind = d.pop("kind")
        if kind not in kinds:
            raise UncoverError(f"unknown intervention kind {kind!r}; valid: {', '.join(kinds)}")
        return kinds[kind](**d)


@dataclass(frozen=True, eq=False)
class Zero(Intervention):
    """Set the value to zero (zero ablation).

    >>> Zero("blocks.0.attn.hook_z", heads=[1])
    Zero(hook='blocks.0.attn.hook_z', positions=None, heads=(1,))
    """

    def new_value(self, value: torch.Tensor, full: torch.Tensor, select: Selector) -> torch.Tensor:
        return torch.zeros_like(value)


@dataclass(frozen=True, eq=False)
class Mean(Intervention):
    """Replace by a mean value (mean ablation); ``mean`` broadcasts against the value.

    Without ``mean`` the mean over the batch and positions of the current input is used.
    """

    mean: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mean is not None:
            object.__setattr__(self, "mean", _tensor_field(self.mean))

    def new_value(self, value: torch.Tensor, full: torch.Tensor, select: Selector) -> torch.Tensor:
        if self.mean is None:
            return full.mean(dim=(0, 1)).expand_as(value)
        return self.mean.to(value).expand_as(value)


@dataclass(frozen=True, eq=False)
class Replace(Intervention):
    """Replace by ``source`` (activation patching): a tensor broadcastable to the value.

    ``source`` is usually a cached activation of another run at the same hook,
    ``[batch, pos, ...]``; it is restricted to the same positions/heads as the value.
    """

    source: torch.Tensor = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source is None:
            raise UncoverError("Replace needs a source tensor (for example a cached activation)")
        object.__setattr__(self, "source", _tensor_field(self.source))

    def new_value(self, value: torch.Tensor, full: torch.Tensor, select: Selector) -> torch.Tensor:
        src = self.source.to(value)
        if src.shape == full.shape:
            src = select(src)
        return src.expand_as(value)


@dataclass(frozen=True, eq=False)
class Add(Intervention):
    """Add ``scale * vector`` (activation addition / steering), ``vector`` is ``[d]``."""

    vector: torch.Tensor = None  # type: ignore[assignment]
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vector is None:
            raise UncoverError("Add needs a vector")
        object.__setattr__(self, "vector", _tensor_field(self.vector))

    def new_value(self, value: torch.Tensor, full: torch.Tensor, select: Selector) -> torch.Tensor:
        return value + self.scale * self.vector.to(value)


@dataclass(frozen=True, eq=False)
class Project(Intervention):
    """Keep only the component along ``direction`` (``[d]``): ``(v·u) u`` with unit ``u``."""

    direction: torch.Tensor = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction is None:
            raise UncoverError("Project needs a direction")
        object.__setattr__(self, "direction", _tensor_field(self.direction))

    def new_value(self, value: torch.Tensor, full: torch.Tensor, select: Selector) -> torch.Tensor:
        u = self.direction.to(value)
        u = u / u.norm()
        return (value @ u).unsqueeze(-1) * u


@dataclass(frozen=True, eq=False)
class Ablate(Intervention):
    """Remove the component along ``direction`` (directional ablation): ``v - (v·u) u``."""

    direction: torch.Tensor = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction is None:
            raise UncoverError("Ablate needs a direction")
        object.__setattr__(self, "direction", _tensor_field(self.direction))

    def new_value(self, value: torch.Tensor, full: torch.Tensor, select: Selector) -> torch.Tensor:
        u = self.direction.to(value)
        u = u / u.norm()
        return value - (value @ u).unsqueeze(-1) * u
