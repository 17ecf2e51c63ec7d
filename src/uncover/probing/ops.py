"""Operations of probing: ``probe`` (probe accuracy by layer with a control task) and ``ccs``.

Both read the residual stream of a dataset (a built-in name or a CSV/JSONL file, see
:func:`uncover.data.labelled.load_labelled` and :func:`~uncover.data.labelled.load_pairs`)
at a selection of layers (:mod:`uncover.probing.layer_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from uncover.core.config import SEED_MAX, param
from uncover.core.errors import UncoverError, UsageError
from uncover.data.activations import collect, resid_hooks
from uncover.data.labelled import BUILTIN, DATA_HELP, PAIRS_WITH_LABELS, load_labelled, load_pairs
from uncover.ops.registry import operation
from uncover.probing.ccs import CCSResult, ccs_layers
from uncover.probing.layer_spec import DatasetLayers
from uncover.probing.layers import ProbeCurve, probe_layers

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class ProbeConfig(DatasetLayers):
    """Probe accuracy by layer, with a control task and selectivity."""

    data: str = param("truth", help=f"Labelled texts: {DATA_HELP} (text,label)", nonempty=True)
    layers: list[int] | str | None = param(None, help="Layers: 0,4,8 or start:stop:step (default all)")
    kind: Literal["logistic", "mlp"] = param("logistic", help="Probe kind")
    folds: int = param(5, help="Cross-validation folds", ge=2)
    where: Literal["last", "mean"] = param("last", help="Position reduction: the last token or the mean of all")
    seed: int = param(0, help="Seed of the folds, the control labels and the probes", ge=0, le=SEED_MAX)


@operation("probe", ProbeConfig, ProbeCurve, example={"data": "sentiment", "layers": [3, 6], "folds": 2})
def probe(model: HookedModel, cfg: ProbeConfig, progress: Progress) -> ProbeCurve:
    """Probe accuracy by layer, with a control task and selectivity (Hewitt & Liang 2019)."""
    ds = load_labelled(cfg.data, model).check()
    hooks = resid_hooks(model, cfg.layer_list(model))
    acts = collect(model, ds, hooks, where=cfg.where, progress=bool(progress))
    return probe_layers(acts, kind=cfg.kind, folds=cfg.folds, seed=cfg.seed, dataset=ds.name)


@dataclass(frozen=True)
class CCSConfig(DatasetLayers):
    """Contrast-consistent search vs a supervised probe, on held-out pairs."""

    default_layers = "::3"

    data: str = param("truth-pairs", help=f"Contrast pairs with labels: {DATA_HELP} (positive,negative,label)",
                      nonempty=True)
    layers: list[int] | str | None = param(None, help="Layers: 0,4,8 or start:stop:step (default every third)")
    restarts: int = param(10, help="Random restarts", ge=1, le=1000)
    seed: int = param(0, help="Seed of the train/test split and the restarts", ge=0, le=SEED_MAX)

    def validate(self) -> None:
        super().validate()
        if self.data in BUILTIN and self.data not in PAIRS_WITH_LABELS:
            raise UsageError(f"CCSConfig: data (--data) {self.data!r} has no labels to report accuracy with; "
                             f"valid: {', '.join(PAIRS_WITH_LABELS)} or a CSV/JSONL file with a label column")


@operation("ccs", CCSConfig, CCSResult, example={"data": "truth-pairs", "layers": [12], "restarts": 2})
def ccs(model: HookedModel, cfg: CCSConfig, progress: Progress) -> CCSResult:
    """Contrast-consistent search (Burns et al. 2022) vs a supervised probe, on held-out pairs."""
    pairs = load_pairs(cfg.data, model).check()
    if pairs.labels is None:
        raise UncoverError(f"{pairs.name}: CCS needs labels to report accuracy "
                           "(a 'label' column: 1 if the positive text is true)")
    hooks = resid_hooks(model, cfg.layer_list(model))
    pos = collect(model, pairs.positive, hooks, progress=bool(progress))
    neg = collect(model, pairs.negative, hooks, progress=bool(progress))
    return ccs_layers(pos, neg, pairs.labels, groups=pairs.groups, restarts=cfg.restarts, seed=cfg.seed,
                      dataset=pairs.name)
