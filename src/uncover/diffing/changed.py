"""The changed model of a diff: another model, or the base plus a saved edit, weight change or steering vector.

:func:`resolve_change` turns what the user gives as CHANGED into a :class:`Change`, whose
:meth:`Change.applied` yields the changed model for a block and leaves the base as it was after it:

- another model (a loaded :class:`~uncover.hooks.hooked.HookedModel`, a ``.gguf`` file, a Hugging Face
  directory such as a pruned model saved by ``uncover prune --out``, or a hub id);
- a saved edit (a directory with ``delta.safetensors`` + ``edit.json``: ``uncover edit --save``) or an
  in-memory edit (anything with ``deltas``), applied to the base with
  :func:`uncover.hooks.weights.apply_change` and restored bit-exactly afterwards;
- a weight change file written by :func:`uncover.hooks.weights.save_change` (``add`` or ``set``);
- a steering vector (``uncover read --save``: safetensors or a GGUF control vector), added at each of its
  layers with ``steer_scale`` while the block runs (no weight changes).

:meth:`Change.weight_delta` summarises what differs in the weights, one row per changed parameter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError, UsageError
from uncover.hooks import weights

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

KINDS = ("model", "edit", "weights", "steering")
_RANK_MAX = 4096  # ranks of deltas up to this size on each side (an SVD per changed matrix)


@dataclass
class Change:
    """How to get the changed model from the base.

    Attributes:
        kind: ``model``, ``edit``, ``weights`` or ``steering``.
        source: what the user gave (a path, an id, or a description).
        model: the other model (``kind == "model"``).
        tensors: parameter path -> delta (``add``) or new value (``set``) (``edit``, ``weights``).
        mode: ``add`` or ``set``.
        interventions: the activation additions of a steering vector.
    """

    kind: str
    source: str
    model: HookedModel | None = None
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    mode: str = "add"
    interventions: list[Any] = field(default_factory=list)

    @contextlib.contextmanager
    def applied(self, base: HookedModel) -> Iterator[HookedModel]:
        """The changed model for the block; the base is bit-identical to before afterwards (Ctrl-C included)."""
        if self.kind == "model":
            yield self.model  # type: ignore[misc]
        elif self.kind == "steering":
            with base.intervene(self.interventions):
                yield base
        else:
            originals = weights.apply_change(base, self.tensors, self.mode, what=f"CHANGED ({self.source})",  # type: ignore[arg-type]
                                             error=UsageError)
            try:
                yield base
            finally:
                weights.restore(base, originals)

    def describe(self) -> str:
        """One line: what CHANGED is."""
        if self.kind == "steering":
            return f"the base steered by {self.source}"
        if self.kind == "model":
            return f"the model {self.source}"
        return f"the base with the {self.kind} {self.source}"

    def weight_delta(self, base: HookedModel) -> list[dict[str, Any]]:
        """One row per changed parameter: path, shape, ``||delta||``, ``||W||``, relative size, rank, entries changed.

        Steering changes no weight: one row per steered hook with the added vector's norm instead.
        """
        if self.kind == "steering":
            return [{"parameter": iv.hook, "shape": list(iv.vector.shape), "delta_norm": float(iv.vector.norm())
                     * abs(iv.scale), "weight_norm": None, "relative": None, "rank": 1,
                     "changed_entries": int((iv.vector != 0).sum()), "what": "activation addition"}
                    for iv in self.interventions]
        params = weights.parameters(base)
        rows = []
        if self.kind == "model":
            other = weights.parameters(self.model)
            if set(other) != set(params) or any(other[k].shape != params[k].shape for k in params):
                missing = sorted(set(params) ^ set(other))[:3]
                raise UsageError(f"CHANGED {self.source} does not have the base's parameters (differs at "
                                 f"{missing or 'shapes'}); diff two checkpoints of one architecture")
            pairs = ((k, params[k].detach(), other[k].detach().to(params[k].device)) for k in params)
        else:
            pairs = ((k, params[k].detach(), (params[k].detach() + t.to(params[k].device, params[k].dtype))
                      if self.mode == "add" else t.to(params[k].device, params[k].dtype))
                     for k, t in self.tensors.items())
        for k, w, new in pairs:
            if torch.equal(w, new):
                continue
            d = (new.float() - w.float())
            rank = None
            if d.dim() == 2 and max(d.shape) <= _RANK_MAX:
                rank = int(torch.linalg.matrix_rank(d))
            wn, dn = float(w.float().norm()), float(d.norm())
            rows.append({"parameter": k, "shape": list(d.shape), "delta_norm": dn, "weight_norm": wn,
                         "relative": dn / wn if wn else None, "rank": rank,
                         "changed_entries": int((d != 0).sum()), "what": "weights"})
        return rows


def resolve_change(base: HookedModel, changed: Any, steer_scale: float = 1.0) -> Change:
    """A :class:`Change` from what the user gave (see the module docstring).

    >>> ch = resolve_change(model, {"model.norm.weight": torch.zeros(576)})
    >>> ch.kind, len(ch.weight_delta(model))
    ('weights', 0)
    """
    from uncover.hooks.hooked import HookedModel

    if isinstance(changed, HookedModel):
        if changed is base:
            raise UsageError("CHANGED is the base model itself; give another model, an edit, a change or a vector")
        return Change("model", changed.name or "CHANGED", model=changed)
    if isinstance(changed, Mapping):
        return _fits(base, Change("weights", "in-memory deltas", tensors=dict(changed), mode="add"))
    if hasattr(changed, "deltas"):  # an Edit (uncover.editing)
        return _fits(base, Change("edit", f"{getattr(changed, 'method', 'edit')} edit",
                                  tensors=dict(changed.deltas), mode="add"))
    if not isinstance(changed, str | Path):
        raise UsageError(f"CHANGED must be a model, a path or an id, got {type(changed).__name__}")
    p = Path(changed)
    if p.is_dir() and (p / "delta.safetensors").is_file() and (p / "edit.json").is_file():
        tensors, mode, _ = weights.load_change(p / "delta.safetensors", default_mode="add", error=UsageError)
        return _fits(base, Change("edit", str(p), tensors=tensors, mode=mode))
    if p.is_file() and p.suffix.lower() in (".safetensors", ".gguf"):
        vec = _steering_vector(p)
        if vec is not None:
            from uncover.hooks.interventions import Add

            vec.check(base)
            ivs = [Add(vec.hook(layer), vector=v, scale=steer_scale) for layer, v in vec.vectors.items()]
            return Change("steering", str(p), interventions=ivs)
        if p.suffix.lower() == ".safetensors":
            tensors, mode, _ = weights.load_change(p, error=UsageError)
            return _fits(base, Change("weights", str(p), tensors=tensors, mode=mode))
    from uncover.hooks.hooked import load

    return Change("model", str(changed), model=load(str(changed)))


def _steering_vector(p: Path) -> Any:
    """The steering vector in ``p``, or ``None`` when ``p`` holds something else (a model, a weight change)."""
    from uncover.steering.vectors import SteeringVector

    try:
        return SteeringVector.load(p)
    except UncoverError:
        return None


def _fits(base: HookedModel, ch: Change) -> Change:
    weights.check_fits(base, ch.tensors, what=f"CHANGED ({ch.source})", error=UsageError)
    return ch
