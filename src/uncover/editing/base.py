"""Edit requests and edit records shared by ROME, MEMIT and knowledge-neuron edits.

A :class:`Request` is one fact to rewrite: a prompt template with ``{}`` where the subject
goes, the subject, and the new target object. :func:`check_request` validates it against a
model (subject in the prompt, a target that tokenises to something) *before* any weight is
touched.

Every edit returns an :class:`Edit`: the weight deltas it added (in the parameters' own
orientation), the original tensors it touched (so :meth:`Edit.revert` is bit-exact), and a
way to save the deltas as safetensors plus JSON metadata and to re-apply them to a freshly
loaded model (:meth:`Edit.load`). :func:`apply_deltas` writes all weight changes at the end
of an edit, inside a ``try`` that restores what was written if anything fails, so a model is
never left half-edited.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.results import Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel

METHODS = ("rome", "memit", "kn")
DELTA_FILE, META_FILE = "delta.safetensors", "edit.json"


class EditError(UncoverError):
    """Bad edit input (subject, target, layer, method) or a saved edit that does not fit the model."""


@dataclass(frozen=True)
class Request:
    """One fact to rewrite: ``prompt.format(subject)`` should be continued by ``target``.

    >>> r = Request("{} is in the city of", "The Eiffel Tower", " Rome")
    >>> r.text
    'The Eiffel Tower is in the city of'
    >>> Request.make("The Eiffel Tower is in the city of", "Eiffel Tower", " Rome").prompt
    'The {} is in the city of'
    """

    prompt: str
    """Template with one ``{}`` where the subject goes."""
    subject: str
    """The subject whose association is rewritten (its last token carries the key)."""
    target: str
    """The new object (leading space matters: ``" Rome"``)."""

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject, 1)

    @classmethod
    def make(cls, prompt: str, subject: str, target: str) -> Request:
        """A request from a template with ``{}``, or from a prompt that contains ``subject`` literally."""
        if not subject or not subject.strip():
            raise EditError("the subject is empty; give the words of the prompt whose fact is edited")
        if prompt.count("{}") == 1:
            return cls(prompt, subject, target)
        if "{}" in prompt:
            raise EditError(f"prompt {prompt!r} has {prompt.count('{}')} '{{}}' slots; valid: exactly one, "
                            "or none with the subject written out in the prompt")
        i = prompt.find(subject)
        if i < 0:
            raise EditError(f"subject {subject!r} is not in the prompt {prompt!r}; write the prompt with '{{}}' "
                            "where the subject goes, or include the subject's exact text")
        return cls(prompt[:i] + "{}" + prompt[i + len(subject):], subject, target)


def check_request(model: HookedModel, request: Request) -> list[int]:
    """Validate ``request`` for ``model``; return the target's token ids.

    Raises :class:`EditError` when the prompt has no single ``{}``, the subject is empty, or
    the target tokenises to nothing.

    >>> check_request(model, Request("{} is in", "Paris", ""))  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    uncover.editing.base.EditError: target '' tokenises to no tokens; give a word such as ' Rome'
    """
    if model.tokenizer is None:
        raise EditError(f"{model.name} has no tokenizer; editing needs one to find the subject and target")
    Request.make(request.prompt, request.subject, request.target)
    if request.prompt.endswith(" ") and request.target.startswith(" "):
        raise EditError(f"the prompt ends with a space and the target {request.target!r} starts with one; "
                        "drop one of them")
    ids = model.tokenizer(request.target, add_special_tokens=False)["input_ids"]
    if not request.target.strip() or not ids:
        raise EditError(f"target {request.target!r} tokenises to no tokens; give a word such as ' Rome'")
    return list(ids)


def check_layer(model: HookedModel, layer: int) -> int:
    """``layer`` if it is a block index of ``model``, else :class:`EditError` naming the range.

    >>> check_layer(model, 40)  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    uncover.editing.base.EditError: layer 40 is out of range; valid: 0 to 29
    """
    n = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise EditError(f"layer {layer} is out of range; valid: 0 to {n - 1}")
    return layer


# ---- the MLP down projection ----------------------------------------------------------------
def down_proj_path(model: HookedModel, layer: int) -> str:
    """Parameter path of the MLP output projection's weight (``model.layers.5.mlp.down_proj.weight``)."""
    f = model.adapter.family
    return f"{f.layers}.{layer}.{f.mlp}.{f.mlp_out}.weight"


def down_proj(model: HookedModel, layer: int) -> torch.Tensor:
    """The MLP output projection as ``[d_model, d_mlp]`` (a view: HF's ``down_proj.weight``, or GPT-2's transposed).

    Its input is ``blocks.{layer}.mlp.hook_post`` (the keys), its output the MLP output (the values).
    """
    w = model.adapter.mlp_part(layer, model.adapter.family.mlp_out).weight
    return w.T if model.adapter.family.conv1d else w


def to_param_layout(model: HookedModel, delta: torch.Tensor) -> torch.Tensor:
    """A ``[d_model, d_mlp]`` delta in the parameter's stored orientation (transposed for ``Conv1D``)."""
    return (delta.T if model.adapter.family.conv1d else delta).contiguous()


# ---- writing weights --------------------------------------------------------------------------
def apply_deltas(model: HookedModel, deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add ``deltas`` (``{param path: tensor}``) to the model; return the originals.

    All-or-nothing: shapes are checked first, and if a write fails the ones already done are
    restored before the error propagates. The new value is ``original + delta`` computed in the
    parameter's dtype, so re-applying the same delta to the same weights gives the same bits.
    """
    params = dict(model.model.named_parameters())
    missing = [k for k in deltas if k not in params]
    if missing:
        raise EditError(f"the edit names parameters this model lacks: {missing[:3]}; it was made for another model")
    bad = [k for k, v in deltas.items() if tuple(v.shape) != tuple(params[k].shape)]
    if bad:
        raise EditError(f"shape mismatch for {bad[:3]}: the edit was made for another model")
    originals: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for k, d in deltas.items():
                p = params[k]
                originals[k] = p.detach().clone()
                p.copy_(originals[k] + d.to(p.device, p.dtype))
    except BaseException:
        restore(model, originals)
        raise
    return originals


def restore(model: HookedModel, originals: dict[str, torch.Tensor]) -> None:
    """Copy ``originals`` back into the model's parameters (bit-exact)."""
    params = dict(model.model.named_parameters())
    with torch.no_grad():
        for k, v in originals.items():
            params[k].copy_(v)


@dataclass
class Edit(Result):
    """A weight edit applied to a model; reverts bit-exactly, saves and re-applies its deltas.

    ``to_frame()``: one row per edited parameter (layer, path, Frobenius norm of the delta and
    of the original weight, rank of the delta).
    """

    method: str
    """``rome``, ``memit``, ``kn-suppress`` or ``kn-update``."""
    requests: list[dict[str, str]]
    """The requests (``prompt``, ``subject``, ``target``)."""
    layers: list[int]
    """Edited blocks."""
    deltas: dict[str, torch.Tensor] = field(repr=False)
    """``{param path: delta}`` in the parameter's orientation and dtype."""
    options: dict[str, Any] = field(default_factory=dict)
    """Method options and diagnostics (loss trace, neurons, ...)."""
    seconds: float = 0.0
    model: Any = field(default=None, repr=False)
    originals: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    is_applied: bool = False

    @property
    def title(self) -> str:
        what = ", ".join(f"{r['subject']} → {r['target']!r}" for r in self.requests[:3])
        more = f" (+{len(self.requests) - 3})" if len(self.requests) > 3 else ""
        return f"{self.method.upper()} edit: {what}{more}"

    def summary(self) -> str:
        state = "applied" if self.is_applied else "reverted"
        return (f"{self.method} edit ({state}) of {len(self.requests)} fact(s) at layer(s) {self.layers}: "
                f"{len(self.deltas)} tensor(s), {self.seconds:.1f} s")

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        params = dict(self.model.model.named_parameters()) if self.model is not None else {}
        rows = []
        for k, d in self.deltas.items():
            d64 = d.double()
            w = self.originals.get(k, params.get(k))
            rows.append({"layer": _layer_of(k), "param": k, "delta_norm": float(d64.norm()),
                         "weight_norm": float(w.double().norm()) if w is not None else float("nan"),
                         "rank": int(torch.linalg.matrix_rank(d64, rtol=1e-5)) if d64.dim() == 2 else 1})
        return pd.DataFrame(rows, columns=["layer", "param", "delta_norm", "weight_norm", "rank"])

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure(go.Bar(x=df["layer"], y=df["delta_norm"] / df["weight_norm"], text=df["rank"],
                               hovertemplate="layer %{x}<br>‖Δ‖/‖W‖ %{y:.4f}<br>rank %{text}<extra></extra>"))
        fig.update_layout(title=self.title, xaxis_title="layer", yaxis_title="‖Δ‖ / ‖W‖", height=360)
        return fig

    # ---- apply / revert ----
    def apply(self) -> Edit:
        """Add the deltas to the model (no-op when already applied)."""
        if not self.is_applied:
            self.originals = apply_deltas(self.model, self.deltas)
            self.is_applied = True
        return self

    def revert(self) -> None:
        """Put every touched tensor back, bit-exactly. Idempotent."""
        if self.is_applied:
            restore(self.model, self.originals)
            self.is_applied = False

    @contextlib.contextmanager
    def applied(self) -> Iterator[HookedModel]:
        """``with edit.applied(): ...`` runs the block with the edit on, then restores the prior state."""
        was = self.is_applied
        self.apply()
        try:
            yield self.model
        finally:
            if not was:
                self.revert()

    # ---- save / load ----
    def save(self, path: str | Path) -> Path:
        """Write ``delta.safetensors`` and ``edit.json`` into the directory ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists() and not path.is_dir():
            raise EditError(f"{path} exists and is not a directory; give a directory to save the edit in")
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.deltas.items()}, str(path / DELTA_FILE))
        meta = {"method": self.method, "requests": self.requests, "layers": self.layers,
                "options": _jsonable(self.options), "seconds": self.seconds,
                "model": getattr(self.model, "name", None)}
        (path / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, model: HookedModel, apply: bool = True) -> Edit:
        """Read a saved edit and (by default) apply it to ``model``.

        >>> e = Edit.load("eiffel-rome", model)  # doctest: +SKIP
        >>> e.revert()  # doctest: +SKIP
        """
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / DELTA_FILE).is_file() or not (path / META_FILE).is_file():
            raise EditError(f"{path} is not a saved edit: expected {DELTA_FILE} and {META_FILE} in it")
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        e = cls(meta["method"], meta["requests"], meta["layers"], load_file(str(path / DELTA_FILE)),
                meta.get("options", {}), meta.get("seconds", 0.0), model=model)
        return e.apply() if apply else e


def make_edit(model: HookedModel, method: str, requests: Sequence[Request], layers: Sequence[int],
              deltas: dict[str, torch.Tensor], options: dict[str, Any], start: float) -> Edit:
    """Build the :class:`Edit` record and apply its deltas (atomically)."""
    params = dict(model.model.named_parameters())
    deltas = {k: v.to(params[k].dtype).contiguous() for k, v in deltas.items()}
    e = Edit(method, [asdict(r) for r in requests], sorted(set(layers)), deltas, options, model=model)
    e.apply()
    e.seconds = time.perf_counter() - start
    return e


def _layer_of(path: str) -> int:
    for part in path.split("."):
        if part.isdigit():
            return int(part)
    return -1


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)
