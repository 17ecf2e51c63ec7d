"""Lossless encoding of result values: a JSON tree plus a dict of tensors.

Tensors and NumPy arrays go to the tensor dict (stored in safetensors, bit-exact); numbers,
text, lists, tuples, dicts (any keys), paths, pandas frames (numeric columns as tensors),
nested dataclasses and SAEs go to the JSON tree with small type tags. Only classes of the
``uncover`` package are rebuilt from a file, and only through their constructors: loading a
result never imports or executes anything else.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from uncover.core.errors import UncoverError

#: module prefixes whose classes results may hold and files may rebuild (extend for your own result classes)
TRUSTED = {"uncover."}
_TRANSIENT = "transient"  # dataclass field metadata key: not saved (a live model, undo buffers)


class Encoder:
    """Turns values into a JSON tree; tensors are collected in :attr:`tensors`.

    >>> enc = Encoder()
    >>> tree = enc.encode({"grid": torch.ones(2), (0, 1): 0.5})
    >>> tree, list(enc.tensors)
    ({'__dict__': [['grid', {'__tensor__': 't0'}], [{'__tuple__': [0, 1]}, 0.5]]}, ['t0'])
    >>> Decoder(enc.tensors).decode(tree)[(0, 1)]
    0.5
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def _tensor(self, t: torch.Tensor) -> str:
        key = f"t{len(self.tensors)}"
        self.tensors[key] = t.detach().to("cpu").contiguous().clone()
        return key

    def encode(self, v: Any) -> Any:
        if v is None or isinstance(v, bool | str):
            return v
        if isinstance(v, int | np.integer) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, float | np.floating):
            f = float(v)
            return f if math.isfinite(f) else {"__float__": repr(f)}
        if isinstance(v, torch.Tensor):
            return {"__tensor__": self._tensor(v)}
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                return {"__objarray__": [self.encode(x) for x in v.tolist()], "shape": list(v.shape)}
            return {"__ndarray__": self._tensor(torch.from_numpy(np.ascontiguousarray(v)))}
        if isinstance(v, PurePath):
            return {"__path__": str(v)}
        if isinstance(v, tuple):
            return {"__tuple__": [self.encode(x) for x in v]}
        if isinstance(v, list):
            return [self.encode(x) for x in v]
        if isinstance(v, dict):
            return {"__dict__": [[self.encode(k), self.encode(x)] for k, x in v.items()]}
        if isinstance(v, set | frozenset):
            return {"__set__": [self.encode(x) for x in sorted(v, key=repr)]}
        if _is_frame(v):
            return self._frame(v)
        if isinstance(v, torch.nn.Module) and hasattr(v, "cfg") and hasattr(v, "state_dict"):
            return self._module(v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return self._dataclass(v)
        if isinstance(v, torch.dtype | torch.device):
            return {"__str__": str(v)}
        raise UncoverError(f"cannot save a value of type {type(v).__name__}; "
                           "results may hold tensors, arrays, numbers, text, lists, dicts, frames and dataclasses")

    def _frame(self, df: Any) -> dict[str, Any]:
        cols = []
        for name in df.columns:
            s = df[name]
            if s.dtype.kind in "biuf":
                cols.append([self.encode(name), str(s.dtype), {"__ndarray__": self._tensor(torch.from_numpy(
                    np.array(s.to_numpy(), copy=True)))}])
            else:
                cols.append([self.encode(name), str(s.dtype), [self.encode(x) for x in s.tolist()]])
        return {"__frame__": cols, "index": self.encode(list(df.index))}

    def _module(self, m: torch.nn.Module) -> dict[str, Any]:
        cls = type(m)
        cfg = m.cfg.to_dict() if hasattr(m.cfg, "to_dict") else dataclasses.asdict(m.cfg)
        state = {k: self.encode(t) for k, t in m.state_dict().items()}
        extra = {k: self.encode(getattr(m, k)) for k in getattr(m, "init_options", ()) if hasattr(m, k)}
        return {"__module__": _qualname(cls), "cfg_class": _qualname(type(m.cfg)), "cfg": self.encode(cfg),
                "state": state, "options": extra}

    def _dataclass(self, obj: Any) -> dict[str, Any]:
        fields = {}
        for f in dataclasses.fields(obj):
            if f.metadata.get(_TRANSIENT):
                continue
            fields[f.name] = self.encode(getattr(obj, f.name))
        return {"__dataclass__": _qualname(type(obj)), "fields": fields}


def _is_frame(v: Any) -> bool:
    return type(v).__name__ == "DataFrame" and type(v).__module__.startswith("pandas")


def _qualname(cls: type) -> str:
    if not cls.__module__.startswith(tuple(TRUSTED)):
        raise UncoverError(f"cannot save {cls.__module__}.{cls.__qualname__}: only classes of trusted modules are "
                           f"saved ({', '.join(sorted(TRUSTED))}; add yours to uncover.core.codec.TRUSTED)")
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_class(name: str) -> type:
    """An ``uncover`` class from ``module:QualName``; anything outside the package is refused.

    >>> resolve_class("uncover.core.provenance:Provenance").__name__
    'Provenance'
    >>> resolve_class("os:system")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UncoverError: refusing to load class 'os:system': only classes of trusted modules are \
loaded (uncover.)
    """
    module, _, qual = name.partition(":")
    if not module.startswith(tuple(TRUSTED)) or not qual or "<" in qual:
        raise UncoverError(f"refusing to load class {name!r}: only classes of trusted modules are loaded "
                           f"({', '.join(sorted(TRUSTED))})")
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise UncoverError(f"class {name!r} no longer exists in this version of uncover") from None
    if not isinstance(obj, type):
        raise UncoverError(f"{name!r} is not a class")
    return obj


class Decoder:
    """Inverse of :class:`Encoder` given its JSON tree and tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def _tensor(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            raise UncoverError(f"the result file is missing tensor {key!r}: it is truncated or was edited")
        return self.tensors[key]

    def decode(self, v: Any) -> Any:
        if isinstance(v, list):
            return [self.decode(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "__tensor__" in v:
            return self._tensor(v["__tensor__"])
        if "__ndarray__" in v:
            return self._tensor(v["__ndarray__"]).numpy()
        if "__objarray__" in v:
            arr = np.empty(len(v["__objarray__"]), dtype=object)
            arr[:] = [self.decode(x) for x in v["__objarray__"]]
            return arr.reshape(v["shape"])
        if "__float__" in v:
            return float(v["__float__"])
        if "__path__" in v:
            return Path(v["__path__"])
        if "__tuple__" in v:
            return tuple(self.decode(x) for x in v["__tuple__"])
        if "__set__" in v:
            return {self.decode(x) for x in v["__set__"]}
        if "__dict__" in v:
            return {_key(self.decode(k)): self.decode(x) for k, x in v["__dict__"]}
        if "__str__" in v:
            return v["__str__"]
        if "__frame__" in v:
            return self._frame(v)
        if "__module__" in v:
            return self._module(v)
        if "__dataclass__" in v:
            return self._dataclass(v)
        raise UncoverError(f"unknown entry in the result file: keys {sorted(v)[:4]}")

    def _frame(self, v: dict[str, Any]) -> Any:
        import pandas as pd

        data = {}
        for name, dtype, col in v["__frame__"]:
            values = self.decode(col)
            data[_key(self.decode(name))] = pd.Series(values, dtype=dtype if dtype != "object" else object)
        df = pd.DataFrame(data)
        df.index = pd.Index(self.decode(v["index"]))
        return df

    def _module(self, v: dict[str, Any]) -> Any:
        cls = resolve_class(v["__module__"])
        cfg_cls = resolve_class(v["cfg_class"]) if "cfg_class" in v else None
        cfg_data = self.decode(v["cfg"])
        cfg = cfg_cls(**cfg_data) if cfg_cls is not None else cfg_data
        m = cls(cfg, **{k: self.decode(x) for k, x in v.get("options", {}).items()})
        m.load_state_dict({k: self.decode(t) for k, t in v["state"].items()})
        return m

    def _dataclass(self, v: dict[str, Any]) -> Any:
        cls = resolve_class(v["__dataclass__"])
        if not dataclasses.is_dataclass(cls):
            raise UncoverError(f"{v['__dataclass__']} is no longer a dataclass")
        known = {f.name: f for f in dataclasses.fields(cls)}
        fields = {k: self.decode(x) for k, x in v["fields"].items() if k in known}
        init = {k: x for k, x in fields.items() if known[k].init}
        for f in known.values():  # transient fields come back empty
            if f.init and f.name not in init and f.metadata.get(_TRANSIENT):
                init[f.name] = None
        missing = [f.name for f in known.values() if f.init and f.name not in init
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise UncoverError(f"the saved {cls.__name__} lacks field(s) {', '.join(missing)}: "
                               "it was written by another version of uncover")
        obj = cls.__new__(cls)
        try:
            obj.__init__(**init)  # type: ignore[misc]
        except TypeError as e:
            raise UncoverError(f"cannot rebuild {cls.__name__}: {e}") from None
        for k, x in fields.items():
            if not known[k].init:
                object.__setattr__(obj, k, x)
        return obj


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def transient(**kw: Any) -> Any:
    """A dataclass field that is not saved with the result (a live model, undo buffers).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Undo:
    ...     buffers: list | None = transient(default=None)
    >>> Encoder().encode(Undo([1]))["fields"]
    {}
    """
    meta = dict(kw.pop("metadata", {}))
    meta[_TRANSIENT] = True
    return dataclasses.field(metadata=meta, **kw)
