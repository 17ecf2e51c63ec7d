"""Sweeps over many prompt pairs: activation and attribution patching, and EAP/EAP-IG circuit discovery.

- :func:`patching_sweep`: each pair patched on its own (:class:`PatchSettings`: activation patching, or its
  attribution-patching estimate), so the map is exactly the single-process loop over pairs and the reduce
  stacks the grids ``[pairs, ...]`` (:func:`stack_grids`).
- :func:`circuit_sweep`: EAP or EAP-IG scores (:func:`uncover.circuits.eap`) of each shard of pairs, whose
  metric is the mean over the shard's prompts; the reduce weighs each shard's scores by its prompt count
  (:func:`mean_scores`), which is the score of one batch of all pairs. The sums run in another order and
  the batches are padded to other lengths, so the scores agree to float rounding (not bit for bit);
  ACDC prunes against the whole prompt set at each step, so it does not split into shards.

Their operations, ``patch-sweep`` and ``circuit-sweep``, are in :mod:`uncover.scale.ops.pair_ops`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UsageError
from uncover.core.results import Result
from uncover.patching.activation import PatchResult
from uncover.scale.ops.engine import Engine
from uncover.scale.sweep import SweepRun, sweep

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.data.tasks import PromptPair
    from uncover.hooks.hooked import HookedModel

METHODS = ("activation", "attribution")


@dataclass(frozen=True)
class PatchSettings:
    """The map of :func:`patching_sweep`: patch each pair of a shard with these settings.

    ``method``: ``activation`` (:func:`uncover.patching.activation_patching`) or ``attribution``
    (:func:`uncover.attribution.attribution_patching`, its first-order estimate); the other fields are
    theirs.
    """

    hook: str = "z"
    per: str = "head"
    metric: str = "logit_diff"
    direction: str = "denoise"
    method: str = "activation"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown patching method {self.method!r}; valid: {', '.join(METHODS)}")

    def __call__(self, model: HookedModel, pairs: list[PromptPair]) -> list[PatchResult]:
        if self.method == "attribution":
            from uncover.attribution.attribution_patching import attribution_patching as patch
        else:
            from uncover.patching.activation import activation_patching as patch

        return [
            patch(
                model,
                p.clean,
                p.corrupt,
                p.answer,
                p.wrong,
                hook=self.hook,
                per=self.per,
                metric=self.metric,
                direction=self.direction,
            )
            for p in pairs
        ]


def stack_grids(parts: list[list[PatchResult]]) -> torch.Tensor:
    """Every pair's grid, stacked ``[pairs, ...]`` (grids per position need pairs of one length).

    >>> r = lambda v: PatchResult("z", "head", torch.full((2, 3), v), [], 0.0, 0.0, "logit_diff", "denoise", True, 0)
    >>> stack_grids([[r(0.0)], [r(1.0), r(2.0)]]).shape
    torch.Size([3, 2, 3])
    """
    grids = [r.grid for p in parts for r in p]
    if len({tuple(g.shape) for g in grids}) > 1:
        raise UsageError(
            "the pairs' grids have different shapes (prompts of different lengths); patch per head "
            "(hook z, per head) or give pairs of one length"
        )
    return torch.stack(grids)


def patching_sweep(
    engine: Engine,
    pairs: list[PromptPair],
    settings: PatchSettings | None = None,
    *,
    shard_size: int = 4,
    progress: Any = False,
) -> SweepRun:
    """Activation or attribution patching over many prompt pairs (``value``: ``[pairs, ...]`` grids; ``partials``:
    each shard's :class:`PatchResult` list).

    >>> from uncover.data.tasks import right_pairs
    >>> from uncover.scale.engines import LocalEngine
    >>> pairs = right_pairs(model, "ioi", n=4).pairs[:2]
    >>> run = patching_sweep(LocalEngine(model), pairs, PatchSettings(method="attribution"), shard_size=1)
    >>> run.value.shape  # [pairs, layer, head]
    torch.Size([2, 30, 9])
    """
    return sweep(
        engine,
        settings or PatchSettings(),
        list(pairs),
        stack_grids,
        shard_size=shard_size,
        progress=progress,
        desc="patching",
    )


@dataclass
class PatchSweep(Result):
    """Activation or attribution patching of many prompt pairs: one grid per pair, and their mean.

    Attributes:
        method: ``activation`` or ``attribution``.
        hook, per, metric, direction, normalised: as in :class:`~uncover.patching.activation.PatchResult`.
        grids: ``[pairs, layer, pos]``, ``[pairs, layer, head]`` or ``[pairs, layer, head, pos]``.
        clean_values, corrupt_values: ``[pairs]`` the metric on each pair's unpatched runs.
        pairs: each pair's ``clean``, ``corrupt``, ``answer`` and ``wrong``.
        str_tokens: the first pair's base prompt, token by token (per-position grids share its length).
        meta: the engine and each shard's seconds.
    """

    method: str
    hook: str
    per: str
    metric: str
    direction: str
    normalised: bool
    grids: torch.Tensor
    clean_values: torch.Tensor
    corrupt_values: torch.Tensor
    pairs: list[dict[str, str]]
    str_tokens: list[str]
    meta: dict[str, Any]

    @classmethod
    def of(cls, settings: PatchSettings, run: SweepRun, pairs: list[PromptPair]) -> PatchSweep:
        """The result of a :func:`patching_sweep` run over ``pairs``."""
        rs = [r for p in run.partials for r in p]
        first = rs[0]
        return cls(
            settings.method,
            first.hook,
            first.per,
            first.metric,
            first.direction,
            first.normalised,
            run.value,
            torch.tensor([r.clean_value for r in rs]),
            torch.tensor([r.corrupt_value for r in rs]),
            [{"clean": p.clean, "corrupt": p.corrupt, "answer": p.answer, "wrong": p.wrong} for p in pairs],
            first.str_tokens,
            {"engine": run.engine, "shard_seconds": [round(s, 4) for s in run.seconds]},
        )

    def mean_result(self) -> PatchResult:
        """The mean grid over pairs as one :class:`PatchResult` (its table and heatmap)."""
        return PatchResult(
            self.hook,
            self.per,
            self.grids.mean(0),
            self.str_tokens,
            float(self.clean_values.mean()),
            float(self.corrupt_values.mean()),
            self.metric,
            self.direction,
            self.normalised,
            0,
        )

    @property
    def title(self) -> str:
        return (
            f"{self.method.capitalize()} patching ({self.direction}) of {self.hook} per "
            f"{self.per.replace('_', ' & ')}, mean of {len(self.grids)} pairs"
        )

    def summary(self) -> str:
        mean, std = self.grids.mean(0).flatten(), self.grids.std(0, correction=0).flatten()
        top = mean.abs().argsort(descending=True)[:5]
        m = self.mean_result()
        unit = "recovery" if self.normalised else self.metric
        return (
            f"{self.title}\n{self.metric}: clean {float(self.clean_values.mean()):.3f}, corrupt "
            f"{float(self.corrupt_values.mean()):.3f} (means); largest mean {unit}: "
            + ", ".join(f"{m._cell(int(i))} {float(mean[i]):+.3f} ± {float(std[i]):.3f}" for i in top)
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per site: the mean over pairs (``value``) and its standard deviation (``std``)."""
        frame = self.mean_result().to_frame()
        frame["std"] = self.grids.std(0, correction=0).flatten().tolist()
        return frame

    def plot(self) -> go.Figure:
        fig = self.mean_result().plot()
        fig.update_layout(title=self.title)
        return fig


@dataclass(frozen=True)
class EapPart:
    """The map of :func:`circuit_sweep`: EAP (or EAP-IG) scores of one shard of pairs, and its prompt count."""

    method: str = "eap"
    metric: str = "logit_diff"
    steps: int = 5

    def __call__(self, model: HookedModel, pairs: list[PromptPair]) -> tuple[torch.Tensor, int]:
        from uncover.circuits.eap import eap
        from uncover.circuits.prompts import Prompts

        prompts = Prompts.build(
            model,
            [p.clean for p in pairs],
            [p.corrupt for p in pairs],
            [p.answer for p in pairs],
            [p.wrong for p in pairs],
        )
        return eap(model, prompts, method=self.method, metric=self.metric, steps=self.steps).scores, prompts.n


def mean_scores(parts: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """``Σ n_i · scores_i / Σ n_i`` (accumulated in float64): the scores of the mean metric over all prompts.

    >>> mean_scores([(torch.tensor([[1.0]]), 1), (torch.tensor([[4.0]]), 3)])
    tensor([[3.2500]])
    """
    total = sum(s.double() * n for s, n in parts)
    return (total / sum(n for _, n in parts)).float()


def circuit_sweep(
    engine: Engine,
    model: HookedModel,
    pairs: list[PromptPair],
    *,
    method: str = "eap",
    metric: str = "logit_diff",
    steps: int = 5,
    shard_size: int = 8,
    progress: Any = False,
) -> SweepRun:
    """EAP or EAP-IG edge scores over many prompt pairs, sharded (``value``: a :class:`Circuit` keeping every
    edge; prune it with ``top`` or ``threshold``). ``model`` gives the graph (the driver's).

    >>> from uncover.circuits.eap import eap
    >>> from uncover.circuits.prompts import Prompts
    >>> from uncover.data.tasks import right_pairs
    >>> from uncover.scale.engines import LocalEngine
    >>> pairs = right_pairs(model, "ioi", n=4).pairs[:2]
    >>> run = circuit_sweep(LocalEngine(model), model, pairs, shard_size=1)
    >>> ref = eap(model, Prompts.build(model, [p.clean for p in pairs], [p.corrupt for p in pairs],
    ...                                [p.answer for p in pairs], [p.wrong for p in pairs]))
    >>> bool((run.value.scores - ref.scores).abs().max() <= 1e-4 * ref.scores.abs().max())
    True
    """
    from uncover.circuits.circuit import Circuit
    from uncover.circuits.eap import EAP_METRICS
    from uncover.circuits.eap import METHODS as EAP_METHODS
    from uncover.circuits.graph import Graph

    if method not in EAP_METHODS:
        raise UsageError(
            f"unknown method {method!r} for a sweep; valid: {', '.join(EAP_METHODS)} (ACDC prunes "
            "against all prompts at once and does not split into shards)"
        )
    if metric not in EAP_METRICS:
        raise UsageError(f"EAP needs a metric with a gradient; valid: {', '.join(EAP_METRICS)}")
    run = sweep(
        engine,
        EapPart(method, metric, steps),
        list(pairs),
        mean_scores,
        shard_size=shard_size,
        progress=progress,
        desc=method,
    )
    graph = Graph.from_model(model)
    info = {
        "model": model.name,
        "prompts": len(pairs),
        **({"steps": steps} if method == "eap-ig" else {}),
        "engine": run.engine,
        "shard_seconds": [round(s, 4) for s in run.seconds],
    }
    run.value = Circuit(graph, run.value * graph.valid, graph.valid.clone(), method, metric, info)
    return run
