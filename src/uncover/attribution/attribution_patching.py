"""Attribution patching (Nanda 2023, "Attribution Patching"; Syed et al. 2023, "Attribution Patching
Outperforms Automated Circuit Discovery").

A first-order Taylor estimate of activation patching for every site at once: the effect of
replacing an activation ``a_base`` by ``a_src`` is approximated by
``∂metric/∂a (base run) · (a_src − a_base)``. One forward pass on each prompt (the base run
with gradients, the source run cached) and one backward pass give every (layer, position) of
``resid_pre``/``attn_out``/``mlp_out`` and every (layer, head) and (layer, head, position) of
``z`` together.

Conventions are those of :mod:`uncover.patching.activation` (``denoise``: base = corrupt,
source = clean; ``noise``: the reverse; the grid holds the estimated metric after the patch,
normalised to recovery by default), and results are :class:`AttributionResult`, a
:class:`~uncover.patching.activation.PatchResult`, so tables and plots are shared.
:func:`compare_attribution` runs exact patching on the same grid and reports Pearson and
Spearman correlations with a scatter plot.

Gradients at hook sites are taken by adding a zero tensor that requires grad to each
activation (``value + δ``, ``∂metric/∂δ = ∂metric/∂value``), so the model is not changed and
no other site's gradient path is cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name
from uncover.core.results import Result
from uncover.hooks import metrics as M
from uncover.patching.activation import HOOKS, PatchResult, activation_patching, check_pair

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel

SITES: tuple[tuple[str, str], ...] = (("resid_pre", "pos"), ("attn_out", "pos"), ("mlp_out", "pos"),
                                      ("z", "head"), ("z", "head_pos"))


@dataclass
class AttributionResult(PatchResult):
    """A :class:`PatchResult` whose grid is the attribution-patching estimate (same fields and views).

    Attributes:
        exact: exact activation patching of the same grid, when it was run to compare
            (:meth:`comparison`); the summary, table and plot then compare the two.
    """

    exact: PatchResult | None = None

    @property
    def title(self) -> str:
        if self.exact is not None:
            return self.comparison().title
        return f"Attribution patching ({self.direction}) of {self.hook} per {self.per.replace('_', ' & ')}"

    def comparison(self) -> AttributionComparison:
        """This estimate next to :attr:`exact` (an ``UncoverError`` when exact patching was not run)."""
        if self.exact is None:
            raise UncoverError("no exact patching to compare with: run with compare (--compare)")
        return AttributionComparison(exact=[self.exact], approx=[self])

    def summary(self) -> str:
        return self.comparison().summary() if self.exact is not None else super().summary()

    def to_frame(self) -> pd.DataFrame:
        """One row per site; with :attr:`exact`, its value in an ``exact`` column."""
        frame = super().to_frame()
        if self.exact is not None:
            frame["exact"] = self.exact.grid.flatten().tolist()
        return frame

    def plot(self) -> go.Figure:
        """The heatmap of the estimate, or with :attr:`exact` the scatter of estimate against exact."""
        return self.comparison().plot() if self.exact is not None else super().plot()


def _check_sites(sites: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    sites = [tuple(s) for s in sites]
    for hook, per in sites:
        if hook not in HOOKS:
            raise UncoverError(f"unknown hook {hook!r}; valid: {', '.join(HOOKS)}")
        if (hook, per) not in SITES:
            valid = "head, head_pos" if hook == "z" else "pos"
            raise UncoverError(f"per={per!r} does not fit hook={hook!r}; valid: {valid}")
    if not sites:
        raise UncoverError(f"no sites given; valid: {', '.join(f'{h}/{p}' for h, p in SITES)}")
    return sites  # type: ignore[return-value]


def attribution_patching_sites(
    model: HookedModel,
    clean: str | torch.Tensor,
    corrupt: str | torch.Tensor,
    answer: str | int,
    wrong: str | int,
    *,
    sites: Sequence[tuple[str, str]] = SITES,
    metric: str = "logit_diff",
    direction: str = "denoise",
    normalise: bool = True,
) -> dict[tuple[str, str], AttributionResult]:
    """Attribution patching of several ``(hook, per)`` grids from one forward/backward pass.

    ``sites``: pairs from :data:`SITES`; returns one :class:`AttributionResult` per pair.

    >>> out = attribution_patching_sites(model, "When Mary and John went to the store, John gave a drink to",
    ...     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
    >>> out[("z", "head")].grid.shape, out[("resid_pre", "pos")].grid.shape
    (torch.Size([30, 9]), torch.Size([30, 14]))
    """
    from uncover.hooks.decode import target_ids

    sites = _check_sites(sites)
    if direction not in ("denoise", "noise"):
        raise UncoverError(f"unknown direction {direction!r}; valid: denoise, noise")
    a_id, w_id = target_ids(model, [answer, wrong])
    fn = M.make_metric(metric, a_id, w_id)
    clean_ids, corrupt_ids = check_pair(model, clean, corrupt)
    base_ids, src_ids = (corrupt_ids, clean_ids) if direction == "denoise" else (clean_ids, corrupt_ids)
    n, n_pos = model.cfg.n_layers, base_ids.shape[1]
    diff = (base_ids[0] != src_ids[0]).nonzero()
    first = int(diff[0]) if len(diff) else n_pos
    names = [act_name(h, i) for h in dict.fromkeys(h for h, _ in sites) for i in range(n)]

    src_logits, src_cache = model.run_with_cache(src_ids, names=names)
    deltas: dict[str, torch.Tensor] = {}
    base: dict[str, torch.Tensor] = {}

    def perturb(name: str):
        def hook(value: torch.Tensor, hp: object) -> torch.Tensor:
            d = torch.zeros_like(value, requires_grad=True)
            deltas[name], base[name] = d, value.detach()
            return value + d

        return hook

    with torch.enable_grad(), model.hooks([(name, perturb(name)) for name in names]):
        logits = model(base_ids)
        value = fn(logits[:, -1])[0]
        grads = torch.autograd.grad(value, [deltas[name] for name in names])
    base_value, src_value = float(value.detach()), float(fn(src_logits[:, -1])[0])
    clean_value, corrupt_value = (src_value, base_value) if direction == "denoise" else (base_value, src_value)
    # attribution per site: grad · (src - base), summed over the model (or head) dimension
    attr = {name: (g * (src_cache[name] - base[name])).sum(-1)[0].float().cpu() for name, g in zip(names, grads)}

    out = {}
    for hook, per in sites:
        per_layer = torch.stack([attr[act_name(hook, i)] for i in range(n)])  # [layer, pos(, head)]
        per_layer[:, :first] = 0.0  # identical prompts before the first difference: nothing to patch
        if per == "head_pos":
            per_layer = per_layer.transpose(1, 2)  # [layer, head, pos]
        elif per == "head":
            per_layer = per_layer.sum(1)  # [layer, head]
        grid = base_value + per_layer
        if normalise:
            grid = M.normalise(grid, clean_value, corrupt_value)
        out[(hook, per)] = AttributionResult(
            hook=hook, per=per, grid=grid, str_tokens=model._strs(base_ids[0].tolist()), clean_value=clean_value,
            corrupt_value=corrupt_value, metric=metric, direction=direction, normalised=normalise, first_diff=first)
    return out


def attribution_patching(
    model: HookedModel,
    clean: str | torch.Tensor,
    corrupt: str | torch.Tensor,
    answer: str | int,
    wrong: str | int,
    *,
    hook: str = "resid_pre",
    per: str = "pos",
    metric: str = "logit_diff",
    direction: str = "denoise",
    normalise: bool = True,
) -> AttributionResult:
    """Attribution-patching estimate of :func:`~uncover.patching.activation.activation_patching` on one grid.

    Same arguments and result layout as ``activation_patching``.

    >>> r = attribution_patching(model, "When Mary and John went to the store, John gave a drink to",
    ...     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
    >>> r.grid.shape  # [layer, position]: 30 blocks, 14 tokens
    torch.Size([30, 14])
    """
    return attribution_patching_sites(model, clean, corrupt, answer, wrong, sites=[(hook, per)], metric=metric,
                                      direction=direction, normalise=normalise)[(hook, per)]


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks with ties sharing their mean rank."""
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    _, inverse = torch.unique(x, return_inverse=True)
    mean = torch.zeros(int(inverse.max()) + 1, dtype=x.dtype).index_add_(0, inverse, ranks)
    return (mean / torch.bincount(inverse).to(x.dtype))[inverse]


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two flat tensors (``nan`` if either is constant).

    >>> round(pearson(torch.tensor([1., 2., 3.]), torch.tensor([2., 4., 7.])), 4)
    0.9934
    """
    x, y = x.double().flatten(), y.double().flatten()
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den > 0 else float("nan")


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (Pearson of the ranks, ties at their mean rank).

    >>> round(spearman(torch.tensor([1., 2., 3., 4.]), torch.tensor([1., 10., 100., 1000.])), 6)
    1.0
    >>> round(spearman(torch.tensor([1., 1., 2.]), torch.tensor([0., 0., 5.])), 6)
    1.0
    """
    return pearson(_ranks(x.double().flatten()), _ranks(y.double().flatten()))


POOR_AGREEMENT = 0.5
"""Pearson r between attribution and exact patching below which a comparison warns."""


def agreement_warning(corr: pd.DataFrame) -> str:
    """A warning naming the sites whose Pearson r is below :data:`POOR_AGREEMENT` (or undefined), else ``""``.

    >>> import pandas as pd
    >>> agreement_warning(pd.DataFrame({"site": ["a/pos", "b/pos"], "pearson": [0.9, 0.07]}))[:60]
    'attribution patching agrees poorly with exact patching on b/'
    """
    bad = [f"{r.site} (r={r.pearson:.2f})" for r in corr.itertuples()
           if not r.pearson == r.pearson or r.pearson < POOR_AGREEMENT]
    if not bad:
        return ""
    return ("attribution patching agrees poorly with exact patching on " + ", ".join(bad)
            + ": its first-order estimate is unreliable there; trust the exact patching values")


def _cells(r: PatchResult) -> torch.Tensor:
    """The grid cells exact patching really ran: positions from the first differing token on."""
    if r.per == "head":
        return r.grid.flatten()
    return r.grid[..., r.first_diff:].flatten()


@dataclass
class AttributionComparison(Result):
    """Exact activation patching next to attribution patching on the same grids.

    Attributes:
        exact: one :class:`PatchResult` per site; approx: the matching :class:`AttributionResult`.
    Correlations use the cells exact patching runs (positions before the first differing token are
    equal to the base run in both methods and are left out).
        warning: non-empty when attribution patching agrees poorly with exact patching on some site
            (Pearson below :data:`POOR_AGREEMENT`): there the linear estimate is not to be trusted
            (see docs/attribution.md: saturated softmaxes and norms make the metric far from linear).
    """

    exact: list[PatchResult]
    approx: list[AttributionResult]
    warning: str = ""

    def __post_init__(self) -> None:
        if not self.warning:
            self.warning = agreement_warning(self.correlations())

    @property
    def title(self) -> str:
        return f"Attribution vs exact activation patching ({self.exact[0].direction})"

    def correlations(self) -> pd.DataFrame:
        """One row per site: Pearson r, Spearman ρ, number of cells, largest absolute error."""
        rows = []
        for e, a in zip(self.exact, self.approx):
            x, y = _cells(e), _cells(a)
            rows.append({"site": f"{e.hook}/{e.per}", "pearson": pearson(x, y), "spearman": spearman(x, y),
                         "cells": len(x), "max_abs_error": float((x - y).abs().max()) if len(x) else 0.0})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        unit = "recovery" if self.exact[0].normalised else self.exact[0].metric
        parts = [f"{r.site}: Pearson {r.pearson:.3f}, Spearman {r.spearman:.3f} ({r.cells} cells)"
                 for r in self.correlations().itertuples()]
        warn = f"WARNING: {self.warning}\n" if self.warning else ""
        return warn + f"attribution vs exact patching ({unit}): " + "; ".join(parts)

    def to_frame(self) -> pd.DataFrame:
        """One row per cell: site, its coordinates, the exact and the attribution value."""
        frames = []
        for e, a in zip(self.exact, self.approx):
            f = e.to_frame().rename(columns={"value": "exact"})
            f.insert(0, "site", f"{e.hook}/{e.per}")
            f["attribution"] = a.grid.flatten().tolist()
            frames.append(f)
        return pd.concat(frames, ignore_index=True)

    def plot(self) -> go.Figure:
        """Scatter of attribution (y) against exact (x), one colour per site, with the diagonal."""
        import plotly.graph_objects as go

        fig = go.Figure()
        corr = self.correlations()
        lo, hi = 0.0, 0.0
        for (e, a), r in zip(zip(self.exact, self.approx), corr.itertuples()):
            x, y = _cells(e), _cells(a)
            lo, hi = min(lo, float(x.min()), float(y.min())), max(hi, float(x.max()), float(y.max()))
            fig.add_trace(go.Scatter(x=x.tolist(), y=y.tolist(), mode="markers", marker={"size": 5, "opacity": 0.7},
                                     name=f"{r.site} (r={r.pearson:.2f})"))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "gray"},
                                 name="y = x"))
        unit = "recovery" if self.exact[0].normalised else self.exact[0].metric
        fig.update_layout(title=self.title, xaxis_title=f"exact patching ({unit})",
                          yaxis_title=f"attribution patching ({unit})", height=560, width=720)
        return fig


def compare_attribution(
    model: HookedModel,
    clean: str | torch.Tensor,
    corrupt: str | torch.Tensor,
    answer: str | int,
    wrong: str | int,
    *,
    sites: Sequence[tuple[str, str]] = SITES[:4],
    metric: str = "logit_diff",
    direction: str = "denoise",
    normalise: bool = True,
) -> AttributionComparison:
    """Run exact and attribution patching on the same ``sites`` and compare them.

    >>> c = compare_attribution(model, "When Mary and John went to the store, John gave a drink to",
    ...     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")  # doctest: +SKIP
    >>> bool(c.correlations()["pearson"].min() > 0.5)  # doctest: +SKIP
    True
    """
    sites = _check_sites(sites)
    kw = {"metric": metric, "direction": direction, "normalise": normalise}
    approx = attribution_patching_sites(model, clean, corrupt, answer, wrong, sites=sites, **kw)
    exact = [activation_patching(model, clean, corrupt, answer, wrong, hook=h, per=p, **kw) for h, p in sites]
    return AttributionComparison(exact=exact, approx=[approx[s] for s in sites])
