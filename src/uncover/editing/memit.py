"""MEMIT: many facts at once, spread over several MLP layers (Meng et al. 2023, "Mass-Editing Memory in a Transformer").

For a batch of requests MEMIT

1. optimises, per request, a residual-stream target ``z = h + δ`` at the last subject token
   after the last *critical* layer ``L`` (ROME's value step, with δ on the block output);
2. walks the edited layers ``l₁ < … < L`` in order; at each it recomputes the keys ``K``
   ``[n, d_mlp]`` (last subject token, averaged over prefixes) and the residual still missing
   at ``L``, ``R = z − h_L`` ``[n, d_model]``, spreads it over the remaining layers
   (``R / (layers left)``) and solves the λ-regularised least squares
   ``Δ = Rᵀ K (λ C + Kᵀ K)⁻¹`` (:func:`memit_update`), ``C = E[k kᵀ]`` on the corpus;
3. applies ``Δ`` before moving to the next layer (temporarily: every update is undone and
   written again in one atomic step at the end, so a failure leaves the model untouched).

With one request and one layer the update is ROME's rank-one update scaled by
``kᵀC⁻¹k / (λ + kᵀC⁻¹k)`` (Sherman–Morrison), which the unit tests check.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from uncover.core.names import act_name
from uncover.editing.base import (
    Edit,
    EditError,
    Request,
    apply_deltas,
    check_layer,
    check_request,
    down_proj,
    down_proj_path,
    make_edit,
    to_param_layout,
)
from uncover.editing.rome import RomeConfig, context_prefixes, encode, optimise_delta, pad, rome_layer, subject_keys
from uncover.editing.stats import damped, layer_mom2
from uncover.hooks import weights
from uncover.hooks.harvest import capture
from uncover.hooks.tokens import Batch

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

MEMIT_CONFIG = RomeConfig(clamp=0.75)
"""MEMIT's value settings (its GPT-J values: δ clamped to 0.75 × the residual norm)."""


def memit_update(R: torch.Tensor, K: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """``Δ = Rᵀ K (λ C + Kᵀ K)⁻¹`` ``[d_out, d_in]`` (float64): MEMIT's batch update for residuals ``R``.

    ``R``: ``[n, d_out]`` wanted output changes; ``K``: ``[n, d_in]`` keys; ``C``: ``[d_in, d_in]``.
    It minimises ``λ‖Δ C^½‖² + ‖K Δᵀ − R‖²``.

    >>> memit_update(torch.tensor([[2.]]), torch.tensor([[1.]]), torch.eye(1), 1.0)
    tensor([[1.]], dtype=torch.float64)
    """
    R, K, C = R.double(), K.double(), C.double()
    A = lam * C + K.T @ K
    return torch.linalg.solve(A, K.T @ R).T  # A symmetric: (Rᵀ K A⁻¹)ᵀ = A⁻¹ Kᵀ R


def memit_layers(model: HookedModel, center: int | None = None, width: int = 5) -> list[int]:
    """``width`` consecutive layers around ``center`` (default the ROME layer), clipped to the model.

    >>> memit_layers(model, 6)
    [4, 5, 6, 7, 8]
    """
    n = model.cfg.n_layers
    c = rome_layer(model) if center is None else check_layer(model, center)
    lo = max(0, min(c - width // 2, n - width))
    return list(range(lo, min(n, lo + width)))


@torch.no_grad()
def output_targets(model: HookedModel, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Changes of the down projection's output ``[n, d_model]`` that add ``R`` ``[n, d_model]`` to the residual.

    Without a post-feedforward norm the MLP output joins the residual as it is: ``R``. With one
    (Gemma 2/3, ``y = w ⊙ x / rms(x)``) the wanted block output ``y + R`` is pulled back through
    the norm at the current output ``x = W k`` of each key ``K`` ``[n, d_mlp]``: ``x' = rms(x) ·
    (y + R) / w``, and the change is ``x' − x`` (exact when ``y + R`` has the norm's output scale;
    MEMIT re-measures the residual still missing after each layer, so the rest is corrected by
    the next layers). Writing ``R`` into the down projection's output instead would be rescaled
    by the norm per dimension and break the edit.

    >>> K = torch.randn(2, model.cfg.d_mlp, dtype=torch.float64)
    >>> R = torch.randn(2, model.cfg.d_model, dtype=torch.float64)
    >>> torch.equal(output_targets(model, 0, K, R), R)  # no post-norm in Llama
    True
    """
    a = model.adapter
    path = a.family.mlp_post_norm
    if path is None:
        return R / a.residual_multiplier  # Granite scales the MLP output as it joins the residual
    if a.family.norm_kind not in ("rms", "rms1p"):
        raise EditError(f"MEMIT through a {a.family.norm_kind} post-feedforward norm is not supported")
    w, bias, eps = a.norm_params(a.sub(layer, path))
    if bias is not None:
        raise EditError("MEMIT through a post-feedforward norm with a bias is not supported")
    W = down_proj(model, layer).detach().double().cpu()  # [d_model, d_mlp]
    b = a.b_out(layer)
    x = K.double() @ W.T + (0 if b is None else b.detach().double().cpu())  # [n, d_model]
    w = torch.ones(x.shape[-1], dtype=torch.float64) if w is None else w.detach().double().cpu()
    floor = 1e-3 * float(w.abs().mean())
    w = torch.where(w.abs() < floor, torch.where(w < 0, -floor, floor), w)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()  # [n, 1]
    y = w * x / scale
    return scale * (y + R.double()) / w - x


@torch.no_grad()
def _residuals(model: HookedModel, layer: int, requests: Sequence[Request]) -> torch.Tensor:
    """``blocks.{layer}.hook_resid_post`` at each request's last subject token, ``[n, d_model]`` (float64)."""
    rows = [encode(model, "", r) for r in requests]
    ids, mask = pad(model, [x[0] for x in rows])
    name = act_name("resid_post", layer)
    _, got = capture(model, Batch(ids, mask), [name])  # the blocks after the layer never run
    idx = torch.tensor([x[1] for x in rows], device=ids.device)
    return got[name][torch.arange(len(rows), device=ids.device), idx].double().cpu()


def memit(
    model: HookedModel,
    requests: Sequence[Request | tuple[str, str, str]],
    *,
    layers: Sequence[int] | None = None,
    mom2_weight: float = 1500.0,
    mom2_samples: int = 20_000,
    cache: str | Path | None = None,
    config: RomeConfig | None = None,
    progress: bool = True,
) -> Edit:
    """Insert many facts at once over ``layers`` (default 5 around the ROME layer); returns an applied Edit.

    ``requests``: :class:`~uncover.editing.base.Request` values or ``(prompt, subject, target)``
    tuples. ``mom2_weight``: λ, the weight of the key statistics against the new keys.

    >>> e = memit(model, [("{} is in the city of", "The Eiffel Tower", " Rome"),
    ...                   ("{} is in the city of", "Big Ben", " Paris")])  # doctest: +SKIP
    >>> e.revert()  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    cfg = config or MEMIT_CONFIG
    reqs = [r if isinstance(r, Request) else Request.make(*r) for r in requests]
    if not reqs:
        raise EditError("no requests given; pass at least one (prompt, subject, target)")
    targets = [check_request(model, r) for r in reqs]
    layers = memit_layers(model) if layers is None else sorted({check_layer(model, int(x)) for x in layers})
    if not layers:
        raise EditError(f"no layers given; valid: 0 to {model.cfg.n_layers - 1}")
    if mom2_weight <= 0:
        raise EditError(f"mom2_weight must be > 0, not {mom2_weight}")
    covs = {x: damped(layer_mom2(model, x, mom2_samples=mom2_samples, cache=cache, progress=progress), cfg.damp)
            for x in layers}
    t1 = time.perf_counter()
    last = layers[-1]
    prefixes = context_prefixes(model, cfg.prefixes, cfg.prefix_tokens, cfg.seed)
    block = model.adapter.block(last)
    deltas = [optimise_delta(model, r, t, prefixes, block, cfg) for r, t in zip(reqs, targets)]
    z = _residuals(model, last, reqs) + torch.stack([d for d, _ in deltas])
    total: dict[str, torch.Tensor] = {}
    saved = weights.snapshot(model, [down_proj_path(model, x) for x in layers])  # before the first write
    try:
        for i, layer in enumerate(layers):
            K = torch.stack([subject_keys(model, layer, r, prefixes).mean(0) for r in reqs])
            R = (z - _residuals(model, last, reqs)) / (len(layers) - i)
            R = output_targets(model, layer, K, R)
            upd = to_param_layout(model, memit_update(R, K, covs[layer], mom2_weight))
            key = down_proj_path(model, layer)
            total[key] = upd
            apply_deltas(model, {key: upd})
    finally:  # the per-layer updates were only for computing the next layer's keys: undo them all
        weights.restore(model, saved)
    opts = {"mom2_samples": mom2_samples, "mom2_weight": mom2_weight, "config": cfg.__dict__,
            "prefixes": prefixes, "nll": [info["nll"] for _, info in deltas],
            "edit_seconds": time.perf_counter() - t1}
    return make_edit(model, "memit", reqs, layers, total, opts, t0)
