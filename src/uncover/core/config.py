"""Operation configs: frozen dataclasses, one documented field each, validated on construction.

A config is what an operation needs besides the model. Every field is declared with
:func:`param`, which carries its help text (the field's docstring, shown by the CLI, the
web forms and ``uncover list``) and its range, so that bad input is refused with one
:class:`~uncover.core.errors.UsageError` that names the field, the bad value and the valid
choices, before any work starts (when the config is built) or, for checks that need the
model (layer indices, hook names, single tokens), right after the model loads
(:meth:`Config.check_model`).

The CLI, the web workbench, reruns and distributed jobs are generated from these
declarations (:func:`fields_of`, :meth:`Config.schema`); nothing else parses user input.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from uncover.core.errors import UsageError, close_matches, did_you_mean

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

_MISSING = dataclasses.MISSING
UNITS = ("layer", "neuron", "head", "hook", "token", "tokens", "context")
PATHS = ("in", "in_dir", "in_any", "out", "out_dir")
#: the largest seed every generator takes (torch.manual_seed overflows beyond it)
SEED_MAX = 2**63 - 1
#: the largest multiplier a scale field takes: beyond it the square, which every norm of a model
#: computes, overflows float32 (3.4e38) even for a unit vector, and the run gives NaN or nonsense
SCALE_MAX = 1e18
#: the largest log-probability gap (nats) a margin takes: e**-100 is below the smallest float32 (1.4e-45)
NATS_MAX = 100.0
#: the largest repetition penalty: the paper's 1.2, HF's usual range 1..2; past 10 every seen token is banned
PENALTY_MAX = 10.0


@dataclass(frozen=True)
class Spec:
    """What :func:`param` records about a field (see :func:`param` for the meaning of each)."""

    help: str
    positional: bool = False
    flag: str | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    nonempty: bool = False
    unit: str | None = None
    path: str | None = None
    min_items: int = 0
    parse: Callable[[str], Any] | None = None
    cli: bool = True


def param(default: Any = _MISSING, *, help: str, positional: bool = False, flag: str | None = None,
          ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
          nonempty: bool = False, unit: str | None = None, path: str | None = None, min_items: int = 0,
          parse: Callable[[str], Any] | None = None, cli: bool = True, default_factory: Any = _MISSING) -> Any:
    """Declare a config field.

    Args:
        default: the default value (omit for a required field).
        help: one line: what the field means (its docstring, shown by every surface).
        positional: a positional CLI argument rather than an option.
        flag: the CLI option's name when it differs from the field's (``"--target"`` for ``targets``).
        ge, gt, le, lt: numeric bounds (numbers, and the items of a list of numbers).
        nonempty: text must hold a non-whitespace character (prompts, tokens).
        unit: a model-dependent check: ``layer``, ``neuron``, ``head`` (an index in range), ``hook`` (a
            hook name of the model), ``token`` (text that is exactly one token), ``tokens`` (text that is
            at least one token), ``context`` (a number of tokens the model's context can hold, such as
            the tokens to generate).
        path: ``in`` (an existing readable file), ``in_dir`` (an existing directory), ``in_any`` (either),
            ``out`` (a file to write: not a directory, its folder exists and is writable), ``out_dir``
            (a directory to write into: not an existing file, its parent exists and is writable).
        min_items: lists need at least this many items.
        parse: CLI only: turns the option's text into the field's value (for lists of numbers).
        cli: whether the CLI offers the field.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Demo(Config):
    ...     k: int = param(5, help="Top-k tokens", ge=1)
    >>> Demo(k=0)
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: Demo: k (--k) must be >= 1, got 0
    """
    if unit is not None and unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; valid: {', '.join(UNITS)}")
    if path is not None and path not in PATHS:
        raise ValueError(f"unknown path kind {path!r}; valid: {', '.join(PATHS)}")
    spec = Spec(help, positional, flag, ge, gt, le, lt, nonempty, unit, path, min_items, parse, cli)
    kw: dict[str, Any] = {"metadata": {"uncover": spec}}
    if default_factory is not _MISSING:
        kw["default_factory"] = default_factory
    elif isinstance(default, list):
        kw["default_factory"] = (lambda d=tuple(default): list(d))
    elif default is not _MISSING:
        kw["default"] = default
    return dataclasses.field(**kw)


@dataclass(frozen=True)
class FieldInfo:
    """A config field with its resolved type and :class:`Spec`."""

    name: str
    type: Any
    spec: Spec
    default: Any

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    @property
    def option(self) -> str:
        """The CLI option name, e.g. ``--max-new-tokens``."""
        return self.spec.flag or "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        return self.name if self.spec.positional else f"{self.name} ({self.option})"


@cache
def fields_of(cls: type) -> tuple[FieldInfo, ...]:
    """The declared fields of a config class, with resolved types.

    >>> [f.name for f in fields_of(Config)]
    []
    """
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("uncover") or Spec(help=f.name)
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else _MISSING)
        out.append(FieldInfo(f.name, hints[f.name], spec, default))
    return tuple(out)


def _optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; other types unchanged."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True  # noqa: UP007
    return tp, False


def _text(f: FieldInfo, owner: str, s: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"{owner}: {f.label} is not valid text (a lone surrogate {s[e.start]!r} "
                         f"at character {e.start}); give UTF-8 text") from None
    if "\x00" in s:
        raise UsageError(f"{owner}: {f.label} holds a NUL character: binary data, not text")
    if f.spec.nonempty and not s.strip():
        raise UsageError(f"{owner}: {f.label} is empty or whitespace only; give some text")
    return s


def _number(f: FieldInfo, owner: str, v: Any, tp: type) -> Any:
    if isinstance(v, bool):
        raise UsageError(f"{owner}: {f.label} must be a number, not {v!r}")
    if tp is int:
        try:
            v = operator.index(v)
        except TypeError:
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise UsageError(f"{owner}: {f.label} must be an integer, got {v!r}") from None
    else:
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise UsageError(f"{owner}: {f.label} must be a number, got {v!r}") from None
        if not math.isfinite(v):
            raise UsageError(f"{owner}: {f.label} must be a finite number, got {v}")
    s = f.spec
    for bound, ok, word in ((s.ge, lambda b: v >= b, ">="), (s.gt, lambda b: v > b, ">"),
                            (s.le, lambda b: v <= b, "<="), (s.lt, lambda b: v < b, "<")):
        if bound is not None and not ok(bound):
            shown = bound if float(bound).is_integer() else format(bound, "g")
            raise UsageError(f"{owner}: {f.label} must be {word} {shown}, got {v if tp is int else format(v, 'g')}")
    return v


def _path(f: FieldInfo, owner: str, v: Any) -> Path:
    if not isinstance(v, str | os.PathLike):
        raise UsageError(f"{owner}: {f.label} must be a path, got {v!r}")
    text = _text(f, owner, os.fspath(v))
    if not text.strip():  # Path("") is the current folder: never what an empty answer meant
        raise UsageError(f"{owner}: {f.label} is an empty path; give a file or folder name")
    p = Path(text)
    kind = f.spec.path
    if kind in ("in", "in_dir", "in_any"):
        if not p.exists():
            raise UsageError(f"{owner}: {f.label} {p} does not exist")
        if kind == "in" and not p.is_file():
            raise UsageError(f"{owner}: {f.label} {p} is not a file")
        if kind == "in_dir" and not p.is_dir():
            raise UsageError(f"{owner}: {f.label} {p} is not a directory")
        if not os.access(p, os.R_OK):
            raise UsageError(f"{owner}: {f.label} {p} is not readable")
    elif kind in ("out", "out_dir"):
        check_writable(p, directory=kind == "out_dir", what=f"{owner}: {f.label}")
    return p


def check_writable(p: Path, *, directory: bool = False, what: str = "output") -> None:
    """Refuse an output path that cannot be written, before any work is done.

    A file must not be an existing directory and its folder must exist and be writable; a
    directory must not be an existing file and must be (or its parent must be) writable.

    >>> check_writable(Path("/no/such/folder/x.html"))
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: output /no/such/folder/x.html: the folder /no/such/folder does not exist
    """
    if directory:
        if p.exists() and not p.is_dir():
            raise UsageError(f"{what} {p} exists and is not a directory")
        target = p if p.exists() else p.parent
    else:
        if p.is_dir():
            raise UsageError(f"{what} {p} is a directory; give a file name")
        target = p.parent
    target = target if str(target) else Path(".")
    if not target.exists():
        raise UsageError(f"{what} {p}: the folder {target} does not exist")
    if not target.is_dir():
        raise UsageError(f"{what} {p}: {target} is not a folder")
    if not os.access(target, os.W_OK):
        raise UsageError(f"{what} {p}: the folder {target} is not writable")


def coerce(f: FieldInfo, owner: str, value: Any) -> Any:
    """Check ``value`` against the field's type and spec; return it normalised (Path, float, list)."""
    return _coerce(f, owner, value, f.type)


def _coerce(f: FieldInfo, owner: str, value: Any, tp: Any) -> Any:
    tp, optional = _optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise UsageError(f"{owner}: {f.label} is required")
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            close = close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{owner}: unknown {f.label} {value!r}; valid: {', '.join(map(str, choices))}{hint}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in get_args(tp):
            if alt is str and not isinstance(value, str):
                continue
            try:
                return _coerce(f, owner, value, alt)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(errors[0] if errors else f"{owner}: {f.label} has the wrong type: {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            raise UsageError(f"{owner}: {f.label} must be a list, got {value!r}")
        (item,) = get_args(tp)[:1] or (Any,)
        out = [_coerce(f, owner, v, item) for v in value]
        if item in (int, float):  # a repeated index (layer, neuron, feature ...) or level is a typo, never a request
            twice = sorted({v for v in out if out.count(v) > 1})
            if twice:
                raise UsageError(f"{owner}: {f.label} lists {', '.join(f'{v:g}' for v in twice)} more than once; "
                                 "give each value once")
        if len(out) < f.spec.min_items:
            raise UsageError(f"{owner}: {f.label} needs at least {f.spec.min_items} item(s), got {len(out)}")
        return out if origin is list else tuple(out)
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{owner}: {f.label} must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        return _number(f, owner, value, tp)
    if tp is str:
        if not isinstance(value, str):
            raise UsageError(f"{owner}: {f.label} must be text, got {type(value).__name__} {value!r}")
        return _text(f, owner, value)
    if tp is Path:
        return _path(f, owner, value)
    return value


@dataclass(frozen=True)
class Config:
    """Base class of operation configs: validated on construction, serialisable, introspectable.

    Subclasses add fields with :func:`param` and may override :meth:`validate` (checks across
    fields) and :meth:`check_model` (checks that need the model).
    """

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for f in fields_of(type(self)):
            object.__setattr__(self, f.name, coerce(f, owner, getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        """Checks across fields; raise :class:`UsageError`. Called on construction."""

    def model_source(self) -> str | None:
        """A model this config names itself, such as ``diff BASE CHANGED``'s BASE (None: the caller's model).

        The CLI loads it in place of ``--model``; :func:`uncover.execute` refuses a model loaded from
        anything else.

        >>> Config().model_source() is None
        True
        """
        return None

    def check_model(self, model: HookedModel) -> None:
        """Checks that need the model (layer, neuron and head indices, hook names, single tokens)."""
        owner = type(self).__name__
        c = model.cfg
        limits = {"layer": c.n_layers, "neuron": c.d_mlp, "head": c.n_heads}
        context = context_length(getattr(getattr(model, "model", None), "config", None))
        for f in fields_of(type(self)):
            unit, value = f.spec.unit, getattr(self, f.name)
            if unit is None or value is None:
                continue
            values = value if isinstance(value, list | tuple) else [value]
            for v in values:
                if unit in limits and isinstance(v, int) and not 0 <= v < limits[unit]:
                    raise UsageError(f"{owner}: {f.label} {v} is out of range; this model has "
                                     f"{unit}s 0..{limits[unit] - 1}")
                if unit == "context" and context is not None and isinstance(v, int) and v > context:
                    raise UsageError(f"{owner}: {f.label} {v} is more tokens than this model's context holds "
                                     f"({context}); give at most {context}")
                if unit == "hook" and isinstance(v, str):
                    model.site(v)
                if unit == "token" and isinstance(v, str):
                    model.to_single_token(v)
                if unit == "tokens" and isinstance(v, str) and not len(model.to_tokens(v).flatten()):
                    raise UsageError(f"{owner}: {f.label} {v!r} is no token at all")

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready field values (paths as strings, tuples as lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields_of(type(self))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Rebuild from :meth:`to_dict`; unknown fields are an error naming the valid ones."""
        names = [f.name for f in fields_of(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise UsageError(f"{cls.__name__}: {did_you_mean(unknown[0], names, 'field')}")
        return cls(**data)

    @classmethod
    def schema(cls) -> dict[str, Any]:
        """A JSON description of the fields (name, type, default, help, bounds, choices), for forms."""
        return {"title": cls.__name__, "description": (cls.__doc__ or "").strip().split("\n")[0],
                "fields": [field_schema(f) for f in fields_of(cls)]}


def context_length(hf_config: Any) -> int | None:
    """The tokens a Hugging Face config's model can attend over (``None``: the config does not say).

    >>> from types import SimpleNamespace
    >>> context_length(SimpleNamespace(n_positions=1024)), context_length(None)
    (1024, None)
    """
    return next((v for v in (getattr(hf_config, k, None) for k in ("max_position_embeddings", "n_positions", "n_ctx"))
                 if isinstance(v, int) and v > 0), None)


def _plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def type_name(tp: Any) -> str:
    """A short readable name of a field type: ``int``, ``list[str]``, ``str | None``, ``one of a, b``."""
    inner, optional = _optional(tp)
    origin = get_origin(inner)
    if origin is Literal:
        name = "choice"
    elif origin in (list, tuple):
        args = get_args(inner)
        name = f"list[{type_name(args[0]) if args else 'any'}]"
    elif origin in (typing.Union, types.UnionType):
        name = " | ".join(type_name(a) for a in get_args(inner))
    else:
        name = {Path: "path"}.get(inner, getattr(inner, "__name__", str(inner)))
    return f"{name} | None" if optional else name


def field_schema(f: FieldInfo) -> dict[str, Any]:
    """The JSON schema entry of one field."""
    inner, optional = _optional(f.type)
    s = f.spec
    out: dict[str, Any] = {"name": f.name, "type": type_name(f.type), "help": s.help, "required": f.required,
                           "optional": optional, "option": f.option, "positional": s.positional}
    if not f.required:
        out["default"] = _plain(f.default)
    if get_origin(inner) is Literal:
        out["choices"] = list(get_args(inner))
    for k in ("ge", "gt", "le", "lt", "unit", "path"):
        if getattr(s, k) is not None:
            out[k] = getattr(s, k)
    if s.nonempty:
        out["nonempty"] = True
    if s.min_items:
        out["min_items"] = s.min_items
    return out
