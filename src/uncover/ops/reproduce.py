"""Reruns and comparisons of saved results.

:func:`rerun` executes a result's operation again from its provenance and says whether the
new result reproduces it (every tensor and number within the operation's stated tolerance;
a non-deterministic operation says so). :func:`compare` puts two results of one operation
side by side: their configs, models and every value that differs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from uncover.core.errors import UsageError
from uncover.core.html import Section
from uncover.core.results import Result
from uncover.hooks.hooked import load
from uncover.ops.provenance import weights_fingerprint
from uncover.ops.registry import execute, get_operation

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

#: fields that hold timings or locations: they differ between runs by nature and are not compared
VOLATILE = frozenset({"seconds", "edit_seconds", "out_dir", "saved", "saved_to", "path", "wall_seconds"})


def _walk(a: Any, b: Any, path: str, rtol: float, atol: float, out: list[dict[str, Any]]) -> float:
    """Append differences of ``a`` and ``b`` to ``out``; return the largest absolute numeric difference."""
    if isinstance(a, np.ndarray) and a.dtype != object:
        a = torch.from_numpy(a)
    if isinstance(b, np.ndarray) and b.dtype != object:
        b = torch.from_numpy(b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
            out.append({"path": path, "a": _short(a), "b": _short(b), "max_abs_diff": math.inf})
            return math.inf
        if a.dtype.is_floating_point or b.dtype.is_floating_point:
            x, y = a.double(), b.double()
            both_nan = torch.isnan(x) & torch.isnan(y)
            d = (x - y).abs().masked_fill(both_nan, 0)
            m = float(d.max()) if d.numel() else 0.0
            ok = bool(((d <= atol + rtol * y.abs()) | both_nan).all()) if d.numel() else True
        else:
            m = float((a.long() - b.long()).abs().max()) if a.numel() else 0.0
            ok = m == 0
        if not ok:
            out.append({"path": path, "a": _short(a), "b": _short(b), "max_abs_diff": m})
        return m
    if isinstance(a, torch.nn.Module) and isinstance(b, torch.nn.Module):  # SAEs: type, config, then weights
        if type(a) is not type(b):
            out.append({"path": path, "a": type(a).__name__, "b": type(b).__name__, "max_abs_diff": None})
            return 0.0
        m = _walk(getattr(a, "cfg", None), getattr(b, "cfg", None), f"{path}.cfg", rtol, atol, out)
        return max(m, _walk(dict(a.state_dict()), dict(b.state_dict()), path, rtol, atol, out))
    if type(a).__name__ == "DataFrame" and type(b).__name__ == "DataFrame":
        if list(a.columns) != list(b.columns) or len(a) != len(b):
            out.append({"path": path, "a": f"table {a.shape}", "b": f"table {b.shape}", "max_abs_diff": math.inf})
            return math.inf
        return max([_walk(a[c].to_list(), b[c].to_list(), f"{path}.{c}", rtol, atol, out) for c in a.columns] + [0.0])
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        m = 0.0
        for f in dataclasses.fields(a):
            if f.name in VOLATILE or f.metadata.get("transient"):
                continue
            m = max(m, _walk(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}".lstrip("."), rtol, atol, out))
        return m
    if isinstance(a, dict) and isinstance(b, dict):
        m = 0.0
        for k in list(a) + [k for k in b if k not in a]:
            if k in VOLATILE:
                continue
            m = max(m, _walk(a.get(k), b.get(k), f"{path}[{k!r}]", rtol, atol, out))
        return m
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            out.append({"path": path, "a": f"{len(a)} items", "b": f"{len(b)} items", "max_abs_diff": math.inf})
            return math.inf
        return max([_walk(x, y, f"{path}[{i}]", rtol, atol, out) for i, (x, y) in enumerate(zip(a, b))] + [0.0])
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool | str):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        d = abs(a - b)
        if not d <= atol + rtol * abs(b):
            out.append({"path": path, "a": a, "b": b, "max_abs_diff": d})
        return d if math.isfinite(d) else math.inf
    if a != b:
        out.append({"path": path, "a": _short(a), "b": _short(b), "max_abs_diff": None})
    return 0.0


def _short(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return f"tensor{tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}"
    text = repr(v)
    return text if len(text) < 80 else text[:77] + "..."


def differences(a: Any, b: Any, rtol: float = 0.0, atol: float = 0.0) -> tuple[list[dict[str, Any]], float]:
    """Every value of ``a`` that differs from ``b`` beyond ``atol + rtol * |b|``, and the largest difference.

    >>> differences({"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([1.0, 2.5])})[0][0]["path"]
    "['x']"
    """
    out: list[dict[str, Any]] = []
    m = _walk(a, b, "", rtol, atol, out)
    return out, m


@dataclass
class Reproduction(Result):
    """Whether a rerun reproduced a saved result.

    Attributes:
        operation: the operation rerun.
        reproduced: every value within tolerance.
        deterministic: whether the operation promises to reproduce (``False``: differences are expected).
        rtol, atol: the tolerance used.
        max_abs_diff: largest absolute difference over every number and tensor.
        same_weights: whether the model's weights fingerprint matched the original's.
        differences: the values that differ (path, original, rerun, largest difference).
        seconds_original, seconds: wall time of the original run and of the rerun.
    """

    operation: str
    reproduced: bool
    deterministic: bool
    rtol: float
    atol: float
    max_abs_diff: float
    same_weights: bool | None
    differences: list[dict[str, Any]] = field(default_factory=list)
    seconds_original: float = 0.0
    seconds: float = 0.0

    @property
    def title(self) -> str:
        return f"Rerun of {self.operation}"

    def summary(self) -> str:
        verdict = "reproduces" if self.reproduced else "does NOT reproduce"
        lines = [f"{self.operation}: {verdict} (largest difference {self.max_abs_diff:.3g}; tolerance "
                 f"rtol={self.rtol:g}, atol={self.atol:g}); {self.seconds:.1f} s "
                 f"(original {self.seconds_original:.1f} s)"]
        if not self.deterministic:
            lines.append("note: this operation is not deterministic (sampling or training): differences are expected")
        if self.same_weights is False:
            lines.append("note: the model's weights differ from the original run's (another fingerprint)")
        lines += [f"  {d['path']}: {d['a']} -> {d['b']}" for d in self.differences[:10]]
        return "\n".join(lines)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.differences, columns=["path", "a", "b", "max_abs_diff"]).astype(
            {"a": str, "b": str})

    def plot(self):
        import plotly.graph_objects as go

        d = [x for x in self.differences if isinstance(x["max_abs_diff"], float) and math.isfinite(x["max_abs_diff"])]
        fig = go.Figure(go.Bar(x=[x["path"] for x in d], y=[x["max_abs_diff"] for x in d]))
        fig.update_layout(title=self.title + (": reproduces" if self.reproduced else ": differs"),
                          yaxis_title="largest absolute difference")
        return fig


def rerun(result: Result, model: HookedModel | None = None, *, device: str | None = None,
          progress: bool = False) -> tuple[Reproduction, Result]:
    """Execute ``result``'s operation again from its provenance; return the verdict and the new result.

    The model is loaded from the provenance's source unless given.

    >>> import uncover as uc
    >>> r = uc.run("lens", model, prompt="The Eiffel Tower is in the city of")
    >>> verdict, again = uc.rerun(r, model)
    >>> verdict.reproduced
    True
    """
    prov = result.provenance
    if prov is None:
        raise UsageError("this result has no provenance: it was not made by an operation "
                         "(run it with uncover.run(...) or the CLI to rerun it later)")
    op = get_operation(prov.operation)
    config = op.config.from_dict(prov.config)
    same = None
    if op.needs_model:
        if model is None:
            model = load(prov.model.get("source") if prov.model else None, device=device, dtype=prov.dtype)
        same = prov.model is not None and weights_fingerprint(model.model) == prov.model.get("fingerprint")
    new = execute(op, config, model, seed=prov.seed, progress=progress)
    diffs, m = differences(new, result, op.rtol, op.atol)
    verdict = Reproduction(op.name, not diffs, op.deterministic, op.rtol, op.atol, m, same, diffs, prov.seconds,
                           new.provenance.seconds if new.provenance else 0.0)
    return verdict, new


@dataclass
class Comparison(Result):
    """Two results of one operation side by side.

    Attributes:
        operation: the operation (or result type) compared.
        a, b: the two results.
        config_changes: config fields that differ: ``{field: [a, b]}``.
        model_changes: model identity entries that differ (name, fingerprint ...): ``{key: [a, b]}``.
        differences: values that differ (path, a, b, largest difference).
        max_abs_diff: the largest absolute difference over every number and tensor.
    """

    operation: str
    a: Result
    b: Result
    config_changes: dict[str, list[Any]]
    model_changes: dict[str, list[Any]]
    differences: list[dict[str, Any]]
    max_abs_diff: float

    @property
    def title(self) -> str:
        return f"Comparison of two {self.operation} results"

    def summary(self) -> str:
        lines = [f"{self.title}: {len(self.differences)} value(s) differ, largest difference {self.max_abs_diff:.4g}"]
        lines += [f"config {k}: {v[0]!r} -> {v[1]!r}" for k, v in self.config_changes.items()]
        lines += [f"model {k}: {v[0]!r} -> {v[1]!r}" for k, v in self.model_changes.items()]
        lines += ["A: " + self.a.summary().split("\n")[0], "B: " + self.b.summary().split("\n")[0]]
        return "\n".join(lines)

    def to_frame(self):
        """Each table cell of A next to B (numeric columns also get ``delta`` = B - A) when the tables align;
        otherwise the list of differences."""
        import pandas as pd

        fa, fb = self.a.to_frame(), self.b.to_frame()
        if list(fa.columns) == list(fb.columns) and len(fa) == len(fb):
            out = pd.DataFrame(index=fa.index)
            for c in fa.columns:
                out[f"{c}_a"], out[f"{c}_b"] = fa[c].to_numpy(), fb[c].to_numpy()
                if fa[c].dtype.kind in "if" and fb[c].dtype.kind in "if":
                    out[f"{c}_delta"] = fb[c].to_numpy() - fa[c].to_numpy()
            return out.reset_index(drop=True)
        return pd.DataFrame(self.differences, columns=["path", "a", "b", "max_abs_diff"]).astype({"a": str, "b": str})

    def plot(self):
        """Every numeric table cell: its value in A against its value in B (points off the diagonal changed)."""
        import plotly.graph_objects as go

        fa, fb = self.a.to_frame(), self.b.to_frame()
        xs, ys, labels = [], [], []
        if list(fa.columns) == list(fb.columns) and len(fa) == len(fb):
            for c in fa.columns:
                if fa[c].dtype.kind in "if" and fb[c].dtype.kind in "if":
                    xs += fa[c].tolist()
                    ys += fb[c].tolist()
                    labels += [f"{c}[{i}]" for i in range(len(fa))]
        fig = go.Figure(go.Scattergl(x=xs, y=ys, mode="markers", text=labels, marker={"size": 5}))
        finite = [v for v in xs + ys if isinstance(v, int | float) and math.isfinite(v)]
        if finite:
            lo, hi = min(finite), max(finite)
            fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "gray"},
                                     showlegend=False))
        fig.update_layout(title=self.title, xaxis_title="A", yaxis_title="B", showlegend=False)
        return fig

    def html_sections(self) -> list[Any]:
        """The comparison, then both results' reports side by side."""
        def column(label: str, r: Result) -> str:
            body = "".join(f"<h3>{label}: {s.title}</h3>{s.body}" for s in r.html_sections())
            return f'<div style="flex:1;min-width:0">{body}</div>'

        side = f'<div style="display:flex;gap:1rem">{column("A", self.a)}{column("B", self.b)}</div>'
        return [Section.from_result(self), Section("Side by side", side)]


def compare(a: Result, b: Result) -> Comparison:
    """Compare two results of the same operation (for example a causal trace before and after an edit).

    >>> import uncover as uc
    >>> a = uc.run("lens", model, prompt="The Eiffel Tower is in the city of")
    >>> b = uc.run("lens", model, prompt="The Colosseum is in the city of")
    >>> c = uc.compare(a, b)
    >>> c.config_changes["prompt"][1]
    'The Colosseum is in the city of'
    """
    pa, pb = a.provenance, b.provenance
    name_a = pa.operation if pa else type(a).__name__
    name_b = pb.operation if pb else type(b).__name__
    if type(a) is not type(b) or name_a != name_b:
        raise UsageError(f"compare needs two results of the same operation, not {name_a} and {name_b}")
    cfg_changes: dict[str, list[Any]] = {}
    model_changes: dict[str, list[Any]] = {}
    if pa and pb:
        for k in dict.fromkeys(list(pa.config) + list(pb.config)):
            if pa.config.get(k) != pb.config.get(k):
                cfg_changes[k] = [pa.config.get(k), pb.config.get(k)]
        ma, mb = pa.model or {}, pb.model or {}
        for k in dict.fromkeys(list(ma) + list(mb)):
            if ma.get(k) != mb.get(k):
                model_changes[k] = [ma.get(k), mb.get(k)]
    diffs, m = differences(a, b)
    return Comparison(name_a, a, b, cfg_changes, model_changes, diffs, m)
