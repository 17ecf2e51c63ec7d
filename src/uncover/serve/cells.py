"""Cells of patching results, rerun one at a time for the page, with their effect on the output distribution.

- :func:`patch_cell`: one cell of an activation-patching grid (or of attribution patching: the exact patch
  behind the gradient estimate), rerun as a scoped ``Replace`` intervention.
- :func:`path_cell`: one sender head of a path-patching result, rerun alone with plain hooks (its corrupt
  output sent through the receivers only).
- :func:`trace_cell`: one restoration of a causal trace under the trace's own noise samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UsageError
from uncover.core.names import act_name
from uncover.serve.common import dist, token_strs

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def patch_cell(model: HookedModel, config: Any, result: Any, index: list[int], k: int = 8) -> dict[str, Any]:
    """One cell of a ``patch`` result, rerun: the output distribution with only that site patched.

    ``config``: the job's ``PatchConfig``; ``result``: its ``PatchResult``; ``index``: the grid cell
    (``[layer, pos]``, ``[layer, head]`` or ``[layer, head, pos]``). Returns the distributions of the base run,
    the patched run and the source run at the last position, with the answer's and wrong token's probabilities.

    >>> from uncover.patching.activation import PatchResult
    >>> from uncover.patching.ops import PatchConfig
    >>> cfg = PatchConfig(clean="The Eiffel Tower is in the city of", corrupt="The Colosseum is in the city of",
    ...                   answer=" Paris", wrong=" Rome")
    >>> grid = torch.zeros(model.cfg.n_layers, 9)  # [layer, pos] (a result of the patch operation, say)
    >>> r = PatchResult("resid_pre", "pos", grid, [], 1.0, 0.0, "logit_diff", "denoise", True, 1)
    >>> cell = patch_cell(model, cfg, r, [0, 3])  # the clean resid at ' Tower' before layer 0
    >>> cell["patched"]["tracked"][0] > cell["base"]["tracked"][0]
    True
    """
    from uncover.hooks.interventions import Replace
    from uncover.patching.activation import check_pair

    grid = result.grid
    if (
        not isinstance(index, list)
        or len(index) != grid.dim()
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in index)
    ):
        raise UsageError(f"cell: give {grid.dim()} integer indices {list(grid.shape)}, got {index!r}")
    for i, n in zip(index, grid.shape):
        if not 0 <= i < n:
            raise UsageError(f"cell {index} is outside the grid {list(grid.shape)}")
    clean, corrupt, answer, wrong = config.pair(model)
    clean_ids, corrupt_ids = check_pair(model, clean, corrupt)
    base, src = (corrupt_ids, clean_ids) if result.direction == "denoise" else (clean_ids, corrupt_ids)
    a_id, w_id = model.to_single_token(answer), model.to_single_token(wrong)
    layer = index[0]
    name = act_name(result.hook, layer)
    _, cache = model.run_with_cache(src, names=[name])
    source = cache[name]
    n_pos = base.shape[1]
    if result.per == "pos":
        iv = Replace(name, positions=(index[1],), source=source)
        label = f"L{layer} {result.hook} @ {token_strs(model, [int(base[0, index[1]])])[0]!r} (pos {index[1]})"
    elif result.per == "head":
        iv = Replace(name, heads=(index[1],), positions=tuple(range(result.first_diff, n_pos)), source=source)
        label = f"L{layer}H{index[1]} z"
    else:
        iv = Replace(name, heads=(index[1],), positions=(index[2],), source=source)
        label = f"L{layer}H{index[1]} z @ pos {index[2]}"
    with torch.no_grad():
        base_logits = model(base)[0, -1]
        src_logits = model(src)[0, -1]
        with model.intervene([iv]):
            patched = model(base)[0, -1]
    tracked = [a_id, w_id]
    return {
        "cell": index,
        "label": label,
        "value": round(float(grid[tuple(index)]), 5),
        "answer": answer,
        "wrong": wrong,
        "direction": result.direction,
        "base": dist(base_logits, model, k, tracked),
        "patched": dist(patched, model, k, tracked),
        "source": dist(src_logits, model, k, tracked),
    }


def _check_index(index: Any, shape: Sequence[int]) -> list[int]:
    if (
        not isinstance(index, list)
        or len(index) != len(shape)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in index)
    ):
        raise UsageError(f"cell: give {len(shape)} integer indices {list(shape)}, got {index!r}")
    for i, n in zip(index, shape):
        if not 0 <= i < n:
            raise UsageError(f"cell {index} is outside the grid {list(shape)}")
    return index


def path_cell(model: HookedModel, config: Any, result: Any, index: list[int], k: int = 8) -> dict[str, Any]:
    """One sender of a ``path`` result, ``index`` = ``[layer, head]``: the clean run with only that head's corrupt
    output sent along the paths into the receivers (every other head frozen clean; MLPs frozen too with
    ``freeze_mlps``). Returns the clean (base), path-patched and corrupt (source) distributions at the last
    position, the grid's ``value`` and ``recomputed``: the same effect from this one run (equal for one pair).

    >>> from uncover.patching.ops import PathConfig
    >>> from uncover.patching.path import path_patching
    >>> cfg = PathConfig(clean="The Eiffel Tower is in the city of", corrupt="The Colosseum is in the city of",
    ...                  answer=" Paris", wrong=" Rome")
    >>> r = path_patching(model, cfg.clean, cfg.corrupt, " Paris", " Rome", senders=[(29, 0)])
    >>> c = path_cell(model, cfg, r, [29, 0])
    >>> abs(c["recomputed"] - c["value"]) < 1e-3
    True
    """
    from uncover.hooks.metrics import make_metric
    from uncover.patching.path import parse_receiver

    layer, head = _check_index(index, list(result.grid.shape))
    if not math.isfinite(float(result.grid[layer, head])):
        raise UsageError(
            f"cell {index}: head L{layer}H{head} was not swept as a sender (it lies at or after the receivers' layer)"
        )
    if not config.explicit:
        raise UsageError(
            "cell: this path-patching result averages a task's pairs; rerun it with one explicit "
            "clean/corrupt pair to open a cell"
        )
    clean, corrupt = model.to_tokens(config.clean), model.to_tokens(config.corrupt)
    a_id, w_id = model.to_single_token(config.answer), model.to_single_token(config.wrong)
    n = model.cfg.n_layers
    z = [act_name("z", i) for i in range(n)]
    mlp = [act_name("mlp_out", i) for i in range(n)] if config.freeze_mlps else []
    with torch.no_grad():
        clean_logits, cc = model.run_with_cache(clean, names=z + mlp)
        corrupt_logits, xc = model.run_with_cache(corrupt, names=[z[layer]])

    def freeze(name: str, sender: bool) -> Any:
        def fn(value: torch.Tensor, hp: Any) -> torch.Tensor:
            out = cc[name].clone()
            if sender:
                out[:, :, head] = xc[name][:, :, head]
            return out

        return fn

    hooks = [(z[j], freeze(z[j], j == layer)) for j in range(layer, n)]
    hooks += [(mlp[j], freeze(mlp[j], False)) for j in range(layer, n)] if mlp else []
    rpos = config.receiver_positions or None
    with torch.no_grad():
        if config.receivers == ["logits"]:
            with model.hooks(hooks):
                patched = model(clean)
        else:
            recv = [parse_receiver(r) for r in config.receivers]
            names = sorted({act_name(w, la) for la, _, w in recv})
            seen: dict[str, torch.Tensor] = {}

            def record(name: str) -> Any:
                def fn(value: torch.Tensor, hp: Any) -> None:
                    seen[name] = value.detach().clone()

                return fn

            with model.hooks(hooks + [(nm, record(nm)) for nm in names]):
                model(clean)  # step 1: the receivers' inputs with the sender's corrupt output along the path

            def put(name: str, heads: list[int]) -> Any:
                def fn(value: torch.Tensor, hp: Any) -> torch.Tensor:
                    out = value.clone()
                    pos = slice(None) if rpos is None else list(rpos)
                    for h in heads:
                        out[:, pos, h] = seen[name][:, pos, h]
                    return out

                return fn

            puts = [(nm, put(nm, sorted({h for la, h, w in recv if act_name(w, la) == nm}))) for nm in names]
            with model.hooks(puts):
                patched = model(clean)  # step 2: only the receivers see it
    fn = make_metric(result.metric, a_id, w_id)
    effect = float(fn(patched[:, -1].float())[0]) - result.clean_value
    if result.normalised:
        effect /= result.clean_value - result.corrupt_value
    tracked = [a_id, w_id]
    return {
        "cell": index,
        "label": f"L{layer}H{head} → {', '.join(result.receivers)}",
        "value": round(float(result.grid[layer, head]), 5),
        "recomputed": round(effect, 5),
        "answer": config.answer,
        "wrong": config.wrong,
        "direction": "noise",
        "titles": ["clean run", "sender's path patched", "corrupt run"],
        "base": dist(clean_logits[0, -1], model, k, tracked),
        "patched": dist(patched[0, -1], model, k, tracked),
        "source": dist(corrupt_logits[0, -1], model, k, tracked),
    }


def trace_cell(model: HookedModel, config: Any, result: Any, kind: str, index: list[int], k: int = 8) -> dict[str, Any]:
    """One cell ``[layer, pos]`` of a causal trace's ``kind`` grid, rerun with plain hooks: the corrupted runs (the
    trace's own seeded noise samples on the subject embeddings), the same with the clean state restored at that
    cell, and the clean run; distributions are averaged over the samples. ``recomputed``: p(answer) restored
    minus corrupted, which the grid holds.

    >>> from uncover.patching.causal_tracing import causal_trace
    >>> from uncover.patching.ops import TraceConfig
    >>> cfg = TraceConfig(prompt="The Eiffel Tower is in the city of", subject="The Eiffel Tower", kind="hidden",
    ...                   samples=2)
    >>> r = causal_trace(model, cfg.prompt, cfg.subject, kind="hidden", samples=2)
    >>> c = trace_cell(model, cfg, r, "hidden", [10, 4])
    >>> abs(c["recomputed"] - c["value"]) < 1e-3
    True
    """
    from uncover.patching.causal_tracing import (
        SITES,
        noise_hook,
        noise_scale,
        subject_noise,
        window_layers,
    )

    if kind not in result.grids:
        raise UsageError(f"kind must be one of {', '.join(result.grids)}, got {kind!r}")
    grid = result.grids[kind]
    layer, pos = _check_index(index, list(grid.shape))
    if config.prompt is None or result.n_prompts != 1:
        raise UsageError("cell: this trace averages several facts; trace one --prompt to open a cell")
    ids = model.to_tokens(config.prompt)
    a_id = model.to_single_token(result.answer)
    subj, n = result.subject, model.cfg.n_layers
    eps = subject_noise(model, config.samples, len(subj), noise_scale(model, config.noise), config.seed)
    names = (
        [act_name("resid_post", layer)]
        if kind == "hidden"
        else [act_name(SITES[kind], la) for la in window_layers(layer, config.window, n)]
    )
    batch = ids.expand(config.samples, -1)
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(ids, names=names)

        def restore(name: str) -> Any:
            def fn(value: torch.Tensor, hp: Any) -> torch.Tensor:
                out = value.clone()
                out[:, pos] = cache[name][:, pos].to(value.dtype)
                return out

            return fn

        noise = [("hook_embed", noise_hook(subj, eps))]
        with model.hooks(noise):
            bad = model(batch)[:, -1].float().softmax(-1).mean(0)  # [d_vocab]
        with model.hooks(noise + [(nm, restore(nm)) for nm in names]):
            fixed = model(batch)[:, -1].float().softmax(-1).mean(0)
    what = {"hidden": "hidden state", "mlp": "MLP outputs", "attn": "attention outputs"}[kind]
    where = f"L{layer}" if kind == "hidden" else f"L{names[0].split('.')[1]}-{names[-1].split('.')[1]}"
    tracked = [a_id]
    return {
        "cell": index,
        "kind": kind,
        "label": f"{what} restored at {where} @ {result.str_tokens[pos]!r} (pos {pos})",
        "value": round(float(grid[layer, pos]), 5),
        "recomputed": round(float(fixed[a_id] - bad[a_id]), 5),
        "answer": result.answer,
        "wrong": None,
        "direction": "restore",
        "titles": ["corrupted (subject noised)", "restored", "clean run"],
        "base": dist(bad.log(), model, k, tracked),
        "patched": dist(fixed.log(), model, k, tracked),
        "source": dist(clean_logits[0, -1], model, k, tracked),
    }
