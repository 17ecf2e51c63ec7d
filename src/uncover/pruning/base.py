"""Shared base of the pruning methods: which weights, argument checks, masks and the revert record.

Pruning applies to every linear layer inside the decoder blocks (attention q/k/v/o or a fused
qkv, and the MLP's in/gate/out projections; on a mixture of experts each expert's gate, up and
down maps, :mod:`uncover.pruning.experts`), never to embeddings, routers or the unembedding. Weights
are handled "output rows first" (``[d_out, d_in]``, as ``nn.Linear`` stores them; GPT-2's
``Conv1D`` is transposed on the fly), so "per output row" means one row here.

Every pruning returns a :class:`Pruning`: it keeps the original tensors of everything it
touched, reverts them bit-exactly, saves the pruned tensors as safetensors and re-applies
them, all through the weight-change mechanism shared with editing (:mod:`uncover.hooks.weights`).
Arguments are validated before any weight changes, and a failure half-way, Ctrl-C included,
restores what was already changed (:func:`edit_weights`), so a model is never left half-pruned.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from uncover.core.codec import transient
from uncover.core.errors import UncoverError
from uncover.core.results import Result
from uncover.hooks import weights
from uncover.pruning.experts import ExpertSite, expert_sites

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel

METHODS = ("magnitude", "wanda", "sparsegpt")
PATTERN_EXAMPLES = "2:4, 4:8"


class PruningError(UncoverError):
    """Bad pruning arguments (sparsity, N:M pattern, method) or a record that does not fit the model."""


# ---- arguments -----------------------------------------------------------------------------
def check_sparsity(sparsity: float) -> float:
    """``sparsity`` as a float in ``[0, 1)``, else :class:`PruningError`.

    >>> check_sparsity(0.5)
    0.5
    >>> check_sparsity(1.0)
    Traceback (most recent call last):
    ...
    uncover.pruning.base.PruningError: sparsity must be in [0, 1) (the fraction of weights set to zero), not 1.0
    """
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise PruningError(f"sparsity must be a number in [0, 1), not {sparsity!r}") from None
    if not 0.0 <= s < 1.0:
        raise PruningError(f"sparsity must be in [0, 1) (the fraction of weights set to zero), not {sparsity}")
    return s


def parse_pattern(pattern: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"N:M"`` → ``(N, M)``: keep at most N nonzero weights in each M consecutive inputs of a row.

    >>> parse_pattern("2:4")
    (2, 4)
    >>> parse_pattern("4:2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    uncover.pruning.base.PruningError: bad N:M pattern '4:2': need 0 < N < M ...
    """
    if pattern is None:
        return None
    if isinstance(pattern, tuple):
        n, m = pattern
    else:
        g = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
        if g is None:
            raise PruningError(f"bad N:M pattern {pattern!r}; valid: {PATTERN_EXAMPLES} (any N:M with 0 < N < M)")
        n, m = int(g.group(1)), int(g.group(2))
    if not 0 < n < m:
        raise PruningError(f"bad N:M pattern '{n}:{m}': need 0 < N < M (N weights kept of every M); "
                           f"valid: {PATTERN_EXAMPLES} (any N:M with 0 < N < M)")
    return n, m


def resolve_target(
    sparsity: float | None, pattern: str | tuple[int, int] | None
) -> tuple[float, tuple[int, int] | None]:
    """Check ``sparsity``/``pattern`` together; with a pattern the sparsity is ``1 - N/M``.

    >>> resolve_target(None, "2:4")
    (0.5, (2, 4))
    >>> resolve_target(0.3, None)
    (0.3, None)
    """
    nm = parse_pattern(pattern)
    if nm is None:
        if sparsity is None:
            raise PruningError("give a sparsity in [0, 1) or an N:M pattern (valid: 2:4, 4:8)")
        return check_sparsity(sparsity), None
    implied = 1.0 - nm[0] / nm[1]
    if sparsity is not None and abs(check_sparsity(sparsity) - implied) > 1e-9:
        raise PruningError(f"sparsity {sparsity} disagrees with pattern {nm[0]}:{nm[1]} (which means {implied:g}); "
                           "give one of them, or the sparsity the pattern implies")
    return implied, nm


# ---- which weights ------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearSite:
    """One linear layer inside a block."""

    layer: int
    """Block index."""
    name: str
    """Path inside the block (``self_attn.q_proj``)."""
    path: str
    """Path from the HF model root (``model.layers.0.self_attn.q_proj``)."""
    module: nn.Module = field(compare=False, repr=False)

    @property
    def rows(self) -> torch.Tensor:
        """The weight as ``[d_out, d_in]`` (a view: writing it writes the model; ``meta`` if offloaded)."""
        return self.module.weight.T if _is_conv1d(self.module) else self.module.weight

    def value(self, model: HookedModel) -> torch.Tensor:
        """The weight as ``[d_out, d_in]``, real even when accelerate offloaded it (for reading)."""
        w = weights.read(model, f"{self.path}.weight")
        return w.T if _is_conv1d(self.module) else w

    def write(self, model: HookedModel, new: torch.Tensor) -> None:
        """Set the weight to ``new`` ``[d_out, d_in]`` wherever it lives (:func:`uncover.hooks.weights.write`)."""
        weights.write(model, f"{self.path}.weight", new.T if _is_conv1d(self.module) else new)

    @property
    def kind(self) -> str:
        """``attn`` or ``mlp`` (by the block's own module names)."""
        return "mlp" if ("mlp" in self.name or "ffn" in self.name) else "attn"

    @property
    def param_path(self) -> str:
        """The weight parameter's path from the HF model root."""
        return f"{self.path}.weight"

    @property
    def param(self) -> torch.Tensor:
        return self.module.weight


Site = LinearSite | ExpertSite
"""A prunable linear map: a block's ``nn.Linear`` or one map of one expert (:mod:`uncover.pruning.experts`)."""


def _is_conv1d(mod: nn.Module) -> bool:
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf")


def linear_sites(model: HookedModel) -> list[Site]:
    """Every linear layer of the blocks, in forward order (no embedding/unembedding); on a mixture of experts,
    each expert's gate, up and down maps too (:func:`~uncover.pruning.experts.expert_sites`).

    >>> [s.name for s in linear_sites(model)][:3]
    ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj']
    """
    root = model.adapter.family.layers
    out: list[Site] = []
    for i in range(model.cfg.n_layers):
        for name, mod in model.adapter.block(i).named_modules():
            if isinstance(mod, nn.Linear) or _is_conv1d(mod):
                out.append(LinearSite(i, name, f"{root}.{i}.{name}", mod))
        out += expert_sites(model, i)
    if not out:
        raise PruningError(f"{model.name}: found no linear layers in the blocks")
    return out


def check_pattern_fits(sites: list[Site], nm: tuple[int, int] | None) -> None:
    """N:M groups need every ``d_in`` to be a multiple of M."""
    if nm is None:
        return
    bad = sorted({s.rows.shape[1] for s in sites if s.rows.shape[1] % nm[1]})
    if bad:
        raise PruningError(f"pattern {nm[0]}:{nm[1]} needs input widths divisible by {nm[1]}; this model has {bad}")


# ---- masks (True = pruned) -------------------------------------------------------------------
def n_pruned(n: int, sparsity: float) -> int:
    """How many of ``n`` weights a sparsity removes: ``round(sparsity * n)``.

    >>> n_pruned(10, 0.25)
    2
    """
    return int(round(sparsity * n))


def lowest_mask(score: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    """Boolean mask of the ``k`` lowest scores along ``dim`` (ties broken by position).

    >>> lowest_mask(torch.tensor([[3., 1., 2.]]), 1)
    tensor([[False,  True, False]])
    """
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        idx = torch.sort(score, dim=dim, stable=True).indices.narrow(dim, 0, k)
        mask.scatter_(dim, idx, True)
    return mask


def row_mask(score: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Mask ``[d_out, d_in]`` pruning the lowest scores of each row: a fraction, or M-N of every M.

    >>> row_mask(torch.tensor([[4., 1., 3., 2.]]), 0.0, (2, 4))
    tensor([[False,  True, False,  True]])
    """
    if nm is None:
        return lowest_mask(score, n_pruned(score.shape[1], sparsity))
    n, m = nm
    groups = score.reshape(score.shape[0], -1, m)
    return lowest_mask(groups, m - n).reshape(score.shape)


def matrix_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask pruning the lowest ``round(sparsity * numel)`` scores of the whole matrix.

    >>> matrix_mask(torch.tensor([[4., 1.], [3., 2.]]), 0.5)
    tensor([[False,  True],
            [False,  True]])
    """
    return lowest_mask(score.flatten(), n_pruned(score.numel(), sparsity)).view(score.shape)


# ---- editing and reverting (the shared mechanism: uncover.hooks.weights) ---------------------
@contextlib.contextmanager
def edit_weights(model: HookedModel) -> Iterator[weights.Transaction]:
    """A block of in-place weight writes that is all-or-nothing (:func:`uncover.hooks.weights.transaction`).

    Call :func:`remember` (or ``tx.remember(path)``) *before* each write; if the block raises,
    Ctrl-C included, every recorded parameter is restored and the error propagates, so a failed
    pruning leaves the model untouched.

    >>> site = linear_sites(model)[0]
    >>> try:
    ...     with edit_weights(model) as tx:
    ...         remember(tx, site); _ = site.rows.zero_()
    ...         raise RuntimeError("half-way")
    ... except RuntimeError:
    ...     pass
    >>> bool(site.rows.abs().sum() > 0)  # restored
    True
    """
    with weights.transaction(model) as tx:
        yield tx


def remember(tx: weights.Transaction, site: Site, what: str = "weight") -> None:
    """Record the original of ``site``'s ``weight`` (or ``bias``) once, before it is written (an expert's map:
    the whole fused parameter)."""
    if what == "weight":
        tx.remember(site.param_path, site.param)
    else:
        tx.remember(f"{site.path}.{what}", getattr(site.module, what))


@dataclass
class Pruning(Result):
    """A pruning applied to a model: what was done, actual sparsity per module, and a bit-exact revert.

    ``to_frame()`` has one row per pruned linear (layer, module, weights, zeros, sparsity).
    """

    method: str
    """``magnitude``, ``wanda``, ``sparsegpt``, ``heads`` or ``neurons`` (structured)."""
    sparsity: float
    """Target fraction of weights (or of heads/neurons) removed."""
    pattern: str | None
    """N:M pattern (``"2:4"``) or ``None`` for unstructured."""
    options: dict[str, Any]
    """Method options (calibration size, dampening, scorer ...)."""
    rows: list[dict[str, Any]]
    """Measured sparsity per pruned module."""
    seconds: float = 0.0
    """Wall time of the pruning."""
    model: Any = transient(default=None, repr=False)
    """The pruned model (not saved)."""
    originals: dict[str, torch.Tensor] | None = transient(default=None, repr=False)
    """The touched parameters as they were before pruning (the undo buffer; not saved)."""
    applied: bool = True
    """Whether the pruning is in the model now (as of saving, for a loaded result)."""

    def __post_init__(self) -> None:
        if self.originals is None:
            self.originals = {}

    @property
    def title(self) -> str:
        pat = f" {self.pattern}" if self.pattern else ""
        return f"Pruning: {self.method}{pat} at sparsity {self.sparsity:g}"

    def overall_sparsity(self) -> float:
        """Fraction of zeros over all pruned modules (measured)."""
        n = sum(r["weights"] for r in self.rows)
        return sum(r["zeros"] for r in self.rows) / max(n, 1)

    def summary(self) -> str:
        state = "applied" if self.applied else "reverted"
        idle = self.options.get("uncalibrated_experts")
        note = f"; {len(idle)} experts got no calibration token (pruned by magnitude per row)" if idle else ""
        return (f"{self.method} pruning ({state}): {len(self.rows)} modules, measured sparsity "
                f"{self.overall_sparsity():.4f} (target {self.sparsity:g}{', ' + self.pattern if self.pattern else ''})"
                f", {self.seconds:.1f} s{note}")

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["layer", "module", "kind", "weights", "zeros", "sparsity"])

    def plot(self) -> go.Figure:
        from uncover.pruning.figures import sparsity_figure

        return sparsity_figure(self.to_frame(), self.title)

    # ---- revert / save / load ----
    def _model(self) -> Any:
        if self.model is None:
            raise PruningError("this pruning has no model (it was loaded from a result file); the pruned "
                               "weights are not in a result file: save them with Pruning.save and use Pruning.load")
        return self.model

    def revert(self) -> None:
        """Put every touched tensor back, bit-exactly. Idempotent."""
        if self.applied:
            weights.restore(self._model(), self.originals)
            self.applied = False

    def reapply(self, pruned: dict[str, torch.Tensor]) -> None:
        """Write ``pruned`` tensors (``{param path: tensor}``) into the model, all-or-nothing, keeping the originals."""
        with weights.interrupts_deferred():  # the record says "applied" whenever the pruned tensors are in
            old = weights.apply_change(self._model(), pruned, "set", what="pruning record", error=PruningError)
            for k, v in old.items():
                self.originals.setdefault(k, v)
            self.applied = True

    def pruned_tensors(self) -> dict[str, torch.Tensor]:
        """The current (pruned) values of every touched parameter."""
        if not self.applied:
            raise PruningError("this pruning has been reverted; nothing to save (re-apply it first)")
        return weights.current(self._model(), self.originals)

    def save(self, path: str | Path) -> Path:
        """Write the pruned tensors and the description to one ``.safetensors`` file."""
        meta = {"method": self.method, "sparsity": repr(self.sparsity), "pattern": self.pattern or "",
                "options": json.dumps(self.options), "rows": json.dumps(self.rows), "seconds": repr(self.seconds)}
        return weights.save_change(path, self.pruned_tensors(), "set", meta)

    @classmethod
    def load(cls, path: str | Path, model: HookedModel) -> Pruning:
        """Apply a saved pruning to ``model``; the returned record reverts it.

        >>> import os, tempfile
        >>> from uncover.pruning import magnitude_prune
        >>> from tests.conftest import tiny
        >>> small = tiny("llama")
        >>> rec = magnitude_prune(small, 0.5)
        >>> path = rec.save(os.path.join(tempfile.mkdtemp(), "p.safetensors"))
        >>> rec.revert()
        >>> again = Pruning.load(path, small)  # pruned again, from the file
        >>> again.overall_sparsity()
        0.5
        >>> again.revert()
        """
        tensors, mode, meta = weights.load_change(path, default_mode="set", error=PruningError)
        if "method" not in meta or mode != "set":
            raise PruningError(f"{path}: not a saved uncover pruning (no 'method' metadata)")
        rec = cls(meta["method"], float(meta["sparsity"]), meta["pattern"] or None, json.loads(meta["options"]),
                  json.loads(meta["rows"]), float(meta.get("seconds", 0.0)), model=model, applied=False)
        with weights.undone_on_error(rec.revert):  # the record is returned, or the model is as it was
            rec.reapply(tensors)
        return rec


def measured_rows(sites: list[Site], model: HookedModel | None = None) -> list[dict[str, Any]]:
    """Measured zeros per linear: ``[{layer, module, kind, weights, zeros, sparsity}, ...]``.

    ``model``: needed when accelerate offloaded weights (they are read where they live).
    """
    out = []
    for s in sites:
        w = s.rows if model is None else s.value(model)
        zeros = int((w == 0).sum())
        out.append({"layer": s.layer, "module": s.name, "kind": s.kind, "weights": w.numel(), "zeros": zeros,
                    "sparsity": zeros / w.numel()})
    return out
