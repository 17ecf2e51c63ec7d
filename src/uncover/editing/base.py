"""Edit requests and edit records shared by ROME, MEMIT and knowledge-neuron edits.

A :class:`Request` is one fact to rewrite: a prompt template with ``{}`` where the subject
goes, the subject, and the new target object. :func:`check_request` validates it against a
model (subject in the prompt, a target that tokenises to something) *before* any weight is
touched.

Every edit returns an :class:`Edit`: the weight deltas it added (in the parameters' own
orientation), the original tensors it touched (so :meth:`Edit.revert` is bit-exact), and a
way to save the deltas as safetensors plus JSON metadata and to re-apply them to a freshly
loaded model (:meth:`Edit.load`). Weights are written through the shared mechanism of
:mod:`uncover.hooks.weights` (also used by pruning): :func:`apply_deltas` writes all of an
edit's changes at its end, all-or-nothing, so an error or Ctrl-C never leaves a model
half-edited.
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

from uncover.core.codec import transient
from uncover.core.errors import UncoverError
from uncover.core.results import Result
from uncover.hooks import weights

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

    >>> check_request(model, Request("{} is in", "Paris", ""))
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

    >>> check_layer(model, 40)
    Traceback (most recent call last):
    ...
    uncover.editing.base.EditError: layer 40 is out of range; valid: 0 to 29
    """
    if model.cfg.n_experts:  # one line naming the family (Mixtral, Qwen-MoE)
        raise model.adapter.no_single_mlp("ROME, MEMIT and knowledge-neuron edits")
    n = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise EditError(f"layer {layer} is out of range; valid: 0 to {n - 1}")
    return layer


# ---- the MLP down projection ----------------------------------------------------------------
def down_proj_path(model: HookedModel, layer: int) -> str:
    """Parameter path of the MLP output projection's weight (``model.layers.5.mlp.down_proj.weight``)."""
    f = model.adapter.family
    return f"{f.layers}.{layer}.{f.mlp}.{f.mlp_out}.weight".replace("..", ".")  # OPT: mlp "" is the block


def down_proj(model: HookedModel, layer: int) -> torch.Tensor:
    """The MLP output projection as ``[d_model, d_mlp]`` (a view: HF's ``down_proj.weight``, or GPT-2's transposed).

    Its input is ``blocks.{layer}.mlp.hook_post`` (the keys), its output the MLP output (the values). An
    offloaded layer's weight is read where it lives (:func:`uncover.hooks.weights.read`), not its empty stand-in.
    """
    w = weights.read(model, down_proj_path(model, layer))
    return w.T if model.adapter.family.conv1d else w


def to_param_layout(model: HookedModel, delta: torch.Tensor) -> torch.Tensor:
    """A ``[d_model, d_mlp]`` delta in the parameter's stored orientation (transposed for ``Conv1D``)."""
    return (delta.T if model.adapter.family.conv1d else delta).contiguous()


# ---- writing weights (the shared mechanism: uncover.hooks.weights) ------------------------------
def apply_deltas(model: HookedModel, deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add ``deltas`` (``{param path: tensor}``) to the model; return the originals.

    All-or-nothing (:func:`uncover.hooks.weights.apply_change` in ``add`` mode): shapes are checked
    first, everything to be written is copied before the first write, and any failure, Ctrl-C
    included, restores the model before the error propagates. The new value is ``original + delta``
    computed in the parameter's dtype, so re-applying the same delta to the same weights gives the
    same bits.

    >>> originals = apply_deltas(model, {})
    """
    return weights.apply_change(model, deltas, "add", what="edit", error=EditError)


def restore(model: HookedModel, originals: dict[str, torch.Tensor]) -> None:
    """Copy ``originals`` back into the model's parameters (bit-exact; Ctrl-C held off until done).

    >>> restore(model, apply_deltas(model, {}))
    """
    weights.restore(model, originals)


@dataclass
class Edit(Result):
    """A weight edit applied to a model; reverts bit-exactly, saves and re-applies its deltas.

    ``to_frame()``: one row per edited parameter (layer, path, Frobenius norm of the delta and
    of the original weight, rank of the delta). Saved as a result (``save``/``uncover.load_result``)
    it keeps its deltas but not the model: :meth:`apply_to` puts it on a model again.

    A hand-made edit (what :func:`~uncover.editing.rome.rome` builds, with a computed delta):

    >>> import time
    >>> req = Request("{} is in the city of", "The Eiffel Tower", " Rome")
    >>> w = down_proj(model, 6)  # [d_model, d_mlp]
    >>> e = make_edit(model, "rome", [req], [6], {down_proj_path(model, 6): 1e-3 * torch.ones_like(w)}, {},
    ...               time.perf_counter())
    >>> e.is_applied, e.to_frame().shape[0]
    (True, 1)
    >>> e.revert()
    >>> with e.applied() as m:  # on for the block only
    ...     on = m("The Eiffel Tower is in the city of")
    >>> e.is_applied
    False
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
    """Wall time of the edit."""
    model: Any = transient(default=None, repr=False)
    """The edited model (not saved)."""
    originals: dict[str, torch.Tensor] | None = transient(default=None, repr=False)
    """The touched parameters as they were before the edit (the undo buffer; not saved)."""
    is_applied: bool = False
    """Whether the deltas are in the model now (as of saving, for a loaded edit)."""

    def __post_init__(self) -> None:
        if self.originals is None:
            self.originals = {}

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

        params = weights.parameters(self.model) if self.model is not None else {}
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
    def _model(self) -> Any:
        if self.model is None:
            raise EditError("this edit has no model (it was loaded from a result file); put it on one with "
                            "edit.apply_to(model)")
        return self.model

    def apply(self) -> Edit:
        """Add the deltas to the model, all-or-nothing (no-op when already applied)."""
        if not self.is_applied:
            with weights.interrupts_deferred():  # the record says "applied" whenever the deltas are in
                self.originals = apply_deltas(self._model(), self.deltas)
                self.is_applied = True
        return self

    def apply_to(self, model: HookedModel) -> Edit:
        """A copy of this edit applied to ``model`` (e.g. an edit loaded from a result file).

        >>> e = Edit("rome", [], [6], {down_proj_path(model, 6): 1e-3 * torch.ones_like(down_proj(model, 6))},
        ...          model=model, is_applied=True)  # a record as loaded from a file: not on this model yet
        >>> e2 = e.apply_to(model)
        >>> e2.is_applied
        True
        >>> e2.revert()
        """
        e = Edit(self.method, [dict(r) for r in self.requests], list(self.layers), dict(self.deltas),
                 dict(self.options), self.seconds, model=model)
        with weights.undone_on_error(e.revert):  # the copy is returned, or the model is as it was
            return e.apply()

    def revert(self) -> None:
        """Put every touched tensor back, bit-exactly. Idempotent."""
        if self.is_applied:
            restore(self._model(), self.originals)
            self.is_applied = False

    @contextlib.contextmanager
    def applied(self) -> Iterator[HookedModel]:
        """``with edit.applied(): ...`` runs the block with the edit on, then restores the prior state."""
        was = self.is_applied
        try:
            self.apply()
            yield self.model
        finally:
            if not was:
                self.revert()

    # ---- save / load ----
    def save(self, path: str | Path) -> Path:
        """Write ``delta.safetensors`` and ``edit.json`` into the directory ``path``.

        (``uncover.load_result`` files come from :meth:`Result.save` through the operation layer;
        this directory format is the one :meth:`load` re-applies to a model.)
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise EditError(f"{path} exists and is not a directory; give a directory to save the edit in")
        path.mkdir(parents=True, exist_ok=True)
        weights.save_change(path / DELTA_FILE, self.deltas, "add")
        meta = {"method": self.method, "requests": self.requests, "layers": self.layers,
                "options": _jsonable(self.options), "seconds": self.seconds,
                "model": getattr(self.model, "name", None)}
        (path / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, model: HookedModel, apply: bool = True) -> Edit:
        """Read a saved edit and (by default) apply it to ``model``.

        >>> import time
        >>> delta = {down_proj_path(model, 6): 1e-3 * torch.ones_like(down_proj(model, 6))}
        >>> e = make_edit(model, "rome", [], [6], delta, {}, time.perf_counter())
        >>> path = e.save(tmp / "eiffel-rome")
        >>> e.revert()
        >>> e = Edit.load(path, model)  # applied again
        >>> e.revert()
        """
        path = Path(path)
        if not (path / DELTA_FILE).is_file() or not (path / META_FILE).is_file():
            raise EditError(f"{path} is not a saved edit: expected {DELTA_FILE} and {META_FILE} in it")
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        deltas, mode, _ = weights.load_change(path / DELTA_FILE, default_mode="add", error=EditError)
        if mode != "add":
            raise EditError(f"{path / DELTA_FILE} holds new weight values (mode {mode!r}), not edit deltas")
        e = cls(meta["method"], meta["requests"], meta["layers"], deltas, meta.get("options", {}),
                meta.get("seconds", 0.0), model=model)
        if apply:
            with weights.undone_on_error(e.revert):  # the edit is returned, or the model is as it was
                e.apply()
        return e


def make_edit(model: HookedModel, method: str, requests: Sequence[Request], layers: Sequence[int],
              deltas: dict[str, torch.Tensor], options: dict[str, Any], start: float) -> Edit:
    """Build the :class:`Edit` record and apply its deltas (atomically; the model is unchanged if this raises).

    >>> import time
    >>> req = Request("{} is in the city of", "The Eiffel Tower", " Rome")
    >>> delta = 1e-3 * torch.ones_like(down_proj(model, 6))  # [d_model, d_mlp], HF's orientation here
    >>> e = make_edit(model, "rome", [req], [6], {down_proj_path(model, 6): delta}, {}, time.perf_counter())
    >>> e.layers, e.is_applied
    ([6], True)
    >>> e.revert()
    """
    params = weights.check_fits(model, deltas, what="edit", error=EditError)
    deltas = {k: v.to(params[k].dtype).contiguous() for k, v in deltas.items()}
    e = Edit(method, [asdict(r) for r in requests], sorted(set(layers)), deltas, options, model=model)
    saved = weights.snapshot(model, deltas)  # so that even Ctrl-C right after the write leaves no half-state
    try:
        e.apply()
        e.seconds = time.perf_counter() - start
    except BaseException:
        weights.restore(model, saved)
        raise
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
