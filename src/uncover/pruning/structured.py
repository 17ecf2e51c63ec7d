"""Structured pruning of attention heads and MLP neurons ranked by a pluggable importance score.

Scorers (``scorer(model, tokens, unit) -> [n_layers, n_units]``, higher = more important):

- ``activation``: mean activation magnitude (``‖hook_z‖`` of a head, ``|hook_post|`` of a neuron).
- ``attribution``: first-order estimate of the loss change when the unit is mean-ablated,
  ``|Σ_tokens (mean(a) − a) · ∂L/∂a|`` (gradient × activation attribution, as Bansal et al. 2023
  used to rank heads and neurons of OPT-66B, after Michel et al. 2019; the mean-ablation form is
  attribution patching, Nanda 2023).

A pruned head has its columns of the output projection set to zero (its output leaves the
residual stream: zero ablation); a pruned neuron has its input row(s) and its output column set
to zero. Units are ranked within each layer (``scope="layer"``) or across all (``"global"``).
On a mixture of experts, heads work; neurons are refused (there is no single MLP per block: prune the
experts' weights with the unstructured methods).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from uncover.core.names import act_name
from uncover.hooks import weights
from uncover.pruning.base import (
    Pruning,
    PruningError,
    _is_conv1d,
    check_sparsity,
    edit_weights,
    linear_sites,
    lowest_mask,
    measured_rows,
    n_pruned,
)

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

UNITS = ("heads", "neurons")
SCOPES = ("layer", "global")
Scorer = Callable[["HookedModel", torch.Tensor, str], torch.Tensor]


def _hook(unit: str, layer: int) -> str:
    return act_name("z" if unit == "heads" else "post", layer)


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise PruningError(f"unknown structured unit {unit!r}; valid: {', '.join(UNITS)}")


def activation_scores(model: HookedModel, tokens: torch.Tensor, unit: str, batch_size: int = 8) -> torch.Tensor:
    """Mean activation magnitude per unit ``[n_layers, n_units]`` over ``tokens`` ``[n, seq]``.

    >>> from uncover.pruning.calibrate import calibration_tokens
    >>> activation_scores(model, calibration_tokens(model, 2, 16), "heads").shape
    torch.Size([30, 9])
    """
    _check_unit(unit)
    names = [_hook(unit, i) for i in range(model.cfg.n_layers)]
    total: torch.Tensor | None = None
    n = 0
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk, names)
        vals = torch.stack([cache[name] for name in names])  # [layer, batch, pos, unit(, d_head)]
        mag = vals.float().norm(dim=-1) if unit == "heads" else vals.float().abs()
        s = mag.sum((1, 2))
        total = s if total is None else total + s
        n += chunk.numel()
    return total / n


def attribution_scores(model: HookedModel, tokens: torch.Tensor, unit: str, batch_size: int = 8) -> torch.Tensor:
    """``|Σ (mean(a) − a) · ∂L/∂a|`` per unit ``[n_layers, n_units]``: estimated loss change of mean ablation.

    ``L`` is the mean next-token loss of each batch; the mean activation is over all ``tokens``.

    >>> from uncover.pruning.calibrate import calibration_tokens
    >>> attribution_scores(model, calibration_tokens(model, 2, 16), "neurons").shape
    torch.Size([30, 1536])
    """
    _check_unit(unit)
    L = model.cfg.n_layers
    mean = activation_means(model, tokens, unit, batch_size)
    total = None
    for chunk in tokens.split(batch_size):
        acts: list[torch.Tensor] = [torch.empty(0)] * L
        probes: list[torch.Tensor] = [torch.empty(0)] * L

        def probe(layer: int, acts: list[torch.Tensor] = acts, probes: list[torch.Tensor] = probes):
            def fn(v: torch.Tensor, hp: object) -> torch.Tensor:
                z = torch.zeros_like(v, requires_grad=True)
                acts[layer], probes[layer] = v.detach(), z
                return v + z

            return fn

        with torch.enable_grad(), model.hooks([(_hook(unit, i), probe(i)) for i in range(L)]):
            ids = chunk.to(model.device)
            logits = model.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            grads = torch.autograd.grad(loss, probes)
        contrib = torch.stack([((mean[i] - acts[i]) * grads[i]).float().sum((0, 1)) for i in range(L)])
        total = contrib if total is None else total + contrib
    return (total.sum(-1) if unit == "heads" else total).abs()


def activation_means(model: HookedModel, tokens: torch.Tensor, unit: str, batch_size: int = 8) -> list[torch.Tensor]:
    """Mean activation per layer over all tokens: ``[n_units(, d_head)]`` each."""
    names = [_hook(unit, i) for i in range(model.cfg.n_layers)]
    sums: list[torch.Tensor] | None = None
    n = 0
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk, names)
        s = [cache[name].sum((0, 1)) for name in names]
        sums = s if sums is None else [a + b for a, b in zip(sums, s)]
        n += chunk.numel()
    return [s / n for s in sums]


SCORERS: dict[str, Scorer] = {"activation": activation_scores, "attribution": attribution_scores}


def _rows(mod: nn.Module) -> torch.Tensor:
    return mod.weight.T if _is_conv1d(mod) else mod.weight


def choose_units(scores: torch.Tensor, sparsity: float, scope: str = "layer") -> torch.Tensor:
    """Boolean ``[n_layers, n_units]``: the lowest-scoring units, per layer or globally.

    >>> choose_units(torch.tensor([[3., 1.], [0., 2.]]), 0.5, "global")
    tensor([[False,  True],
            [ True, False]])
    """
    if scope not in SCOPES:
        raise PruningError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    if scope == "layer":
        return lowest_mask(scores, n_pruned(scores.shape[1], sparsity))
    return lowest_mask(scores.flatten(), n_pruned(scores.numel(), sparsity)).view(scores.shape)


def prune_structured(
    model: HookedModel,
    unit: str = "heads",
    sparsity: float = 0.25,
    *,
    scorer: str | Scorer = "attribution",
    scope: str = "layer",
    tokens: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    n_samples: int = 8,
    seq_len: int = 128,
) -> Pruning:
    """Remove the least important ``sparsity`` fraction of heads or MLP neurons (in place; reverts).

    ``scores``: precomputed ``[n_layers, n_units]`` importances (skips the scorer).

    >>> p = prune_structured(model, "heads", 0.25, scorer="attribution", n_samples=2, seq_len=32)
    >>> len(p.options["pruned"]), p.options["pruned"][0][0]  # (layer, head) pairs, 2 of 9 heads per layer
    (60, 0)
    >>> p.revert()
    """
    _check_unit(unit)
    s = check_sparsity(sparsity)
    c = model.cfg
    if unit == "neurons" and c.n_experts:
        raise PruningError(f"structured neuron pruning ranks the neurons of one MLP per block, but {c.family} has a "
                           f"mixture-of-experts MLP ({c.n_experts} experts, top-{c.top_k}): prune the experts' "
                           "weights with magnitude, wanda or sparsegpt, or remove heads")
    if scope not in SCOPES:
        raise PruningError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    if isinstance(scorer, str) and scorer not in SCORERS:
        raise PruningError(f"unknown scorer {scorer!r}; valid: {', '.join(SCORERS)} (or a callable)")
    shape = (c.n_layers, c.n_heads if unit == "heads" else c.d_mlp)
    if scores is not None and tuple(scores.shape) != shape:
        raise PruningError(f"scores must have shape [n_layers, n_{unit}] = {list(shape)}, not {list(scores.shape)}")
    t0 = time.perf_counter()
    given = scores is not None
    if scores is None:
        if tokens is None:
            from uncover.pruning.calibrate import calibration_tokens

            tokens = calibration_tokens(model, n_samples, seq_len)
        fn = SCORERS[scorer] if isinstance(scorer, str) else scorer
        scores = fn(model, tokens, unit).detach().float().cpu()
    chosen = choose_units(scores, s, scope)
    a, f = model.adapter, model.adapter.family
    with edit_weights(model) as tx, torch.no_grad():

        def zero(mod: nn.Module | None, what: str, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
                 path: str = "") -> None:
            if mod is None:
                return
            t = getattr(mod, what, None)
            if t is None:
                return
            tx.remember(f"{path}.{what}", t)
            new = None
            if t.device.type == "meta":  # offloaded by accelerate: change a copy, write it back where it lives
                new = weights.read(model, f"{path}.{what}").detach().clone()
                v = new.T if what == "weight" and _is_conv1d(mod) else new
            else:
                v = _rows(mod) if what == "weight" else t
            if rows is not None:
                v[rows] = 0.0
            if cols is not None:
                v[:, cols] = 0.0
            if new is not None:
                weights.write(model, f"{path}.{what}", new)

        for layer in range(c.n_layers):
            ids = chosen[layer].nonzero().flatten()
            if not len(ids):
                continue
            base = f"{f.layers}.{layer}"
            if unit == "heads":
                cols = (ids[:, None] * c.d_head + torch.arange(c.d_head)).flatten()
                zero(a.attn_part(layer, f.o), "weight", cols=cols, path=f"{base}.{f.attn}.{f.o}")
            else:
                for name in (f.mlp_in, f.mlp_gate):
                    if name is not None:
                        p = f"{base}.{f.mlp}.{name}".replace("..", ".")  # OPT: mlp "" is the block
                        zero(a.mlp_part(layer, name), "weight", rows=ids, path=p)
                        zero(a.mlp_part(layer, name), "bias", rows=ids, path=p)
                zero(a.mlp_part(layer, f.mlp_out), "weight", cols=ids,
                     path=f"{base}.{f.mlp}.{f.mlp_out}".replace("..", "."))
        # the record is built inside the transaction: an interrupt before it exists still restores the model
        rows = measured_rows(linear_sites(model), model)
        pruned = [[int(i), int(j)] for i, j in chosen.nonzero().tolist()]
        name = scorer if isinstance(scorer, str) else getattr(scorer, "__name__", "custom")
        record = Pruning(unit, s, None, {"scorer": "given" if given else name, "scope": scope, "pruned": pruned},
                         rows, time.perf_counter() - t0, model=model, originals=tx.originals)
    return record
