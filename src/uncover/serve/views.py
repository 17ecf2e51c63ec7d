"""What the workbench's views show, as JSON: pure functions of a model and a prompt, or of a result.

- :func:`prompt_view`: tokens, the next-token distribution, the logit-lens heatmap, every head's attention
  pattern and the direct logit attribution of an answer against a wrong token, from the library's own
  ``run_with_cache`` (logits and patterns in one forward), ``logit_lens`` and ``direct_logit_attribution``.
- :func:`patch_cell`: one cell of an activation-patching grid, rerun as a scoped ``Replace`` intervention,
  with its effect on the output distribution.
- :func:`path_cell`: one sender head of a path-patching result, rerun alone with plain hooks (its corrupt
  output sent through the receivers only), and :func:`trace_cell`: one restoration of a causal trace under
  the trace's own noise samples; both with their effect on the output distribution. A cell of attribution
  patching is :func:`patch_cell` (the exact patch behind the gradient estimate).
- :func:`edit_generalisation`: an applied edit's paraphrases and neighbourhood prompts scored before (the
  edit taken off) and after (back on), with the rows an edit evaluation uses
  (:func:`uncover.editing.evaluate.fact_rows`).
- :func:`features_view`: the SAE latents active on each token of a prompt (the SAE's own encoder on the
  activation at its hook); :func:`latent_effect`: generations and next-token distributions before and
  after ablating or steering one latent (:func:`uncover.sae.attach.attach_sae`, error term kept).
- :func:`result_view`: any operation's result for the page (summary, table, figure, provenance), plus what
  a dedicated view needs (a patching grid, a circuit's edges, steered generations, an edit's rows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UsageError
from uncover.core.names import act_name

if TYPE_CHECKING:
    from uncover.core.results import Result
    from uncover.hooks.hooked import HookedModel

#: longest prompt of the prompt view, in tokens
MAX_TOKENS = 256
#: table rows sent to the page
MAX_RECORDS = 500
#: circuit edges sent to the page (the slider picks how many to draw)
MAX_EDGES = 300


def _r(t: torch.Tensor, digits: int = 4) -> Any:
    """A tensor as nested lists of rounded floats (NaN/inf as None, for JSON)."""
    def fix(x: float) -> float | None:
        return round(x, digits) if math.isfinite(x) else None

    def walk(v: Any) -> Any:
        return [walk(x) for x in v] if isinstance(v, list) else fix(float(v))

    return walk(t.detach().float().cpu().tolist())


def _token_id(model: HookedModel, tok: str | int | None, fallback: int) -> int:
    if tok is None or tok == "":
        return fallback
    if isinstance(tok, bool) or not isinstance(tok, int | str):
        raise UsageError(f"a token must be text or a token id, got {tok!r}")
    if isinstance(tok, int):
        if not 0 <= tok < model.cfg.d_vocab:
            raise UsageError(f"token id {tok} is out of range; this model has ids 0..{model.cfg.d_vocab - 1}")
        return tok
    return model.to_single_token(tok)


def prompt_view(model: HookedModel, prompt: str, answer: str | int | None = None, wrong: str | int | None = None,
                k: int = 10, lens_positions: str = "all") -> dict[str, Any]:
    """Everything the prompt explorer shows about ``prompt``.

    ``answer``/``wrong``: the tokens (text or id) whose logit difference DLA explains; default the model's top
    two next tokens. Returns ``tokens``, ``top`` (next-token ``[token, id, prob]``), ``lens`` (``[layer, pos]``
    top-1 token and probability), ``attention`` (``[layer][head][q][k]``) and ``dla`` (labels, contributions,
    the ``[layer, head]`` grid and the logit difference). ``lens_positions``: ``all`` (the heatmap over every
    position: one unembedding per layer and position, the view's largest cost) or ``last``.

    >>> v = prompt_view(model, "The Eiffel Tower is in the city of")
    >>> v["top"][0][0], len(v["attention"]) == model.cfg.n_layers
    (' Paris', True)
    """
    from uncover.attribution.dla import direct_logit_attribution
    from uncover.lenses.logit_lens import logit_lens

    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError("prompt: give some text")
    if lens_positions not in ("all", "last"):
        raise UsageError(f"lens_positions must be 'all' or 'last', got {lens_positions!r}")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 50:
        raise UsageError(f"k must be an integer 1..50, got {k!r}")
    ids = model.to_tokens(prompt)[0]
    if len(ids) > MAX_TOKENS:
        raise UsageError(f"prompt is {len(ids)} tokens; the prompt view takes at most {MAX_TOKENS}")
    c = model.cfg
    names = [act_name("pattern", layer) for layer in range(c.n_layers)]
    with torch.no_grad():  # one forward gives the next-token logits and every head's pattern
        out, cache = model.run_with_cache(ids[None], names=names)
        lens = logit_lens(model, ids[None], positions=None if lens_positions == "all" else -1, k=1)
    logits = out[0, -1].float()  # [d_vocab]
    att = torch.stack([cache[n][0] for n in names]).float()  # [layer, head, q, k]
    nxt = _dist(logits, model, k, [])
    top2 = logits.topk(2).indices.tolist()
    a_id = _token_id(model, answer, top2[0])
    w_id = _token_id(model, wrong, top2[1])
    if a_id == w_id:
        raise UsageError("answer and wrong are the same token; pick two different tokens")
    dla = direct_logit_attribution(model, ids[None], a_id, w_id)
    return {
        "tokens": lens.str_tokens[0],
        "ids": ids.tolist(),
        "top": nxt["top"],
        "lens": {"layers": lens.layers, "positions": lens.positions[0],
                 "tokens": [[pos[0] for pos in layer] for layer in lens.top_tokens[0]],
                 "probs": _r(lens.top_probs[0, :, :, 0]), "kl": _r(lens.kl_to_final[0])},
        "attention": _r(att, 3),
        "dla": {"answer": model._strs([a_id])[0], "wrong": model._strs([w_id])[0], "answer_id": a_id,
                "wrong_id": w_id, "labels": dla.labels, "contributions": _r(dla.contributions[:, 0]),
                "heads": _r(_head_grid(dla)),
                "logit_diff": round(float(dla.logit_diff[0]), 5)},
        "n_layers": c.n_layers, "n_heads": c.n_heads,
    }


def _head_grid(dla: Any) -> torch.Tensor:
    """``[layer, head]`` DLA of each head (``head_grid`` is a property or a method, by version)."""
    g = dla.head_grid
    return g() if callable(g) else g


def _dist(logits: torch.Tensor, model: HookedModel, k: int, ids: list[int]) -> dict[str, Any]:
    """Top-k tokens and the probabilities of ``ids`` under ``logits`` ``[d_vocab]``."""
    p = torch.softmax(logits.float(), -1)
    tp, ti = p.topk(k)
    return {"top": [[model._strs([int(i)])[0], int(i), round(float(v), 5)] for v, i in zip(tp, ti)],
            "tracked": [round(float(p[i]), 5) for i in ids]}


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
    if (not isinstance(index, list) or len(index) != grid.dim()
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in index)):
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
        label = f"L{layer} {result.hook} @ {model._strs([int(base[0, index[1]])])[0]!r} (pos {index[1]})"
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
    return {"cell": index, "label": label, "value": round(float(grid[tuple(index)]), 5),
            "answer": answer, "wrong": wrong, "direction": result.direction,
            "base": _dist(base_logits, model, k, tracked), "patched": _dist(patched, model, k, tracked),
            "source": _dist(src_logits, model, k, tracked)}


def _check_index(index: Any, shape: Sequence[int]) -> list[int]:
    if (not isinstance(index, list) or len(index) != len(shape)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in index)):
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
        raise UsageError(f"cell {index}: head L{layer}H{head} was not swept as a sender (it lies at or after the "
                         "receivers' layer)")
    if not config.explicit:
        raise UsageError("cell: this path-patching result averages a task's pairs; rerun it with one explicit "
                         "clean/corrupt pair to open a cell")
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
    return {"cell": index, "label": f"L{layer}H{head} → {', '.join(result.receivers)}",
            "value": round(float(result.grid[layer, head]), 5), "recomputed": round(effect, 5),
            "answer": config.answer, "wrong": config.wrong, "direction": "noise",
            "titles": ["clean run", "sender's path patched", "corrupt run"],
            "base": _dist(clean_logits[0, -1], model, k, tracked), "patched": _dist(patched[0, -1], model, k, tracked),
            "source": _dist(corrupt_logits[0, -1], model, k, tracked)}


def trace_cell(model: HookedModel, config: Any, result: Any, kind: str, index: list[int], k: int = 8
               ) -> dict[str, Any]:
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
        _SITE,
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
    names = ([act_name("resid_post", layer)] if kind == "hidden"
             else [act_name(_SITE[kind], la) for la in window_layers(layer, config.window, n)])
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
    return {"cell": index, "kind": kind, "label": f"{what} restored at {where} @ {result.str_tokens[pos]!r} "
            f"(pos {pos})", "value": round(float(grid[layer, pos]), 5),
            "recomputed": round(float(fixed[a_id] - bad[a_id]), 5), "answer": result.answer, "wrong": None,
            "direction": "restore", "titles": ["corrupted (subject noised)", "restored", "clean run"],
            "base": _dist(bad.log(), model, k, tracked), "patched": _dist(fixed.log(), model, k, tracked),
            "source": _dist(clean_logits[0, -1], model, k, tracked)}


def _prompts(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split("\n")
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise UsageError(f"{what}: give a list of prompts")
    out = [p for p in value if p.strip()]
    if len(out) > 32 or any(len(p) > 1000 for p in out):
        raise UsageError(f"{what}: at most 32 prompts of at most 1000 characters")
    return out


def edit_generalisation(model: HookedModel, report: Any, config: Any, paraphrases: Any = None,
                        neighbours: Any = None, true: Any = None) -> dict[str, Any]:
    """Paraphrases and neighbourhood prompts of an applied edit, scored before and after it.

    ``report``: the edit's ``EditReport`` (its edit is applied and is the latest weight change); ``config``: its
    ``EditConfig``. Without prompts, those of the embedded CounterFact fact with the same subject are used.
    ``true``: the object the model knew (default: the top prediction before the edit). Rows are
    :func:`uncover.editing.evaluate.fact_rows` (``logp_true``, ``logp_new``, ``success``: paraphrases should now
    give the new object, neighbours should keep the true one), with the edit taken off for ``before`` and put back
    (bit-exactly) for ``after``.

    >>> import uncover
    >>> from uncover.editing.ops import EditConfig
    >>> cfg = EditConfig(prompt="{} is in the city of", subject="The Eiffel Tower", target=" Rome", method="kn",
    ...                  layer=28, gen_tokens=0)
    >>> r = uncover.run("edit", model, **cfg.to_dict())
    >>> g = edit_generalisation(model, r, cfg)
    >>> r.revert()
    >>> g["true"], sorted(g["scores"]["before"])
    (' Paris', ['efficacy', 'neighbourhood', 'paraphrase'])
    """
    from uncover.data.counterfact import Counterfact, counterfacts
    from uncover.editing.evaluate import fact_rows

    req = config.request()
    known = next((f for f in counterfacts() if f.subject.lower() == req.subject.lower()), None)
    paras, neigh = _prompts(paraphrases, "paraphrases"), _prompts(neighbours, "neighbours")
    if not paras and not neigh:
        if known is None:
            raise UsageError(f"give paraphrases or neighbourhood prompts: the embedded CounterFact facts have none "
                             f"for {req.subject!r}")
        paras, neigh = list(known.paraphrases), list(known.neighbours)
    if true is None or true == "":
        before = next(r for r in report.rows if r["stage"] == "before")
        true = known.true if known is not None and known.true != req.target else before["top"][0][0]
    if not isinstance(true, str):
        raise UsageError(f"true: give the object the model knew as text, got {true!r}")
    if true == req.target:
        raise UsageError(f"true and the edit's target are the same ({true!r}); give the object the model knew")
    fact = Counterfact(req.subject, req.prompt, true, req.target, tuple(paras), tuple(neigh))
    e = report.edit
    e.revert()
    try:
        rows_before = fact_rows(model, fact, "before")
    finally:
        e.apply()  # back on, whatever happened
    rows = fact_rows(model, fact, "after")
    rows = [r for pair in zip(rows_before, rows) for r in pair]
    scores: dict[str, dict[str, float]] = {}
    for r in rows:
        scores.setdefault(r["stage"], {}).setdefault(r["metric"], []).append(r["value"])  # type: ignore[arg-type]
    return {"true": true, "new": req.target, "paraphrases": paras, "neighbours": neigh, "rows": rows,
            "scores": {st: {m: sum(v) / len(v) for m, v in ms.items()} for st, ms in scores.items()}}


def _prompt_ids(model: HookedModel, prompt: Any) -> torch.Tensor:
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError("prompt: give some text")
    ids = model.to_tokens(prompt)[0]
    if len(ids) > MAX_TOKENS:
        raise UsageError(f"prompt is {len(ids)} tokens; the features view takes at most {MAX_TOKENS}")
    return ids


def check_sae(model: HookedModel, sae: Any) -> Any:
    """``sae`` if its hook exists in ``model`` with the SAE's input width (else a ``UsageError``)."""
    from uncover.core.errors import UncoverError

    hook = sae.cfg.hook_name
    try:
        model.site(hook)
    except UncoverError as e:
        raise UsageError(f"the SAE reads {hook!r}, which this model lacks ({e})") from None
    _, cache = model.run_with_cache(model.to_tokens("a")[:, :1], names=[hook])
    width = cache[hook][0, 0].numel()
    if width != sae.cfg.d_in:
        raise UsageError(f"the SAE reads {sae.cfg.d_in}-wide activations at {hook}, but this model's are {width} "
                         "wide: it was trained on another model")
    return sae


def features_view(model: HookedModel, sae: Any, prompt: str, k: int = 5) -> dict[str, Any]:
    """The SAE latents active on each token of ``prompt``: ``[pos]`` lists of ``[latent, activation]``.

    The activation at the SAE's hook is encoded by the SAE (``sae.encode``: ``[pos, d_sae]``); each position
    lists its ``k`` strongest active latents; ``top`` lists the latents with the largest activation anywhere
    in the prompt (``[latent, max activation, position]``), strongest first. The first position (often a BOS
    token with an outsized norm, skipped when SAEs are trained) is listed but left out of ``top``.

    >>> v = features_view(model, sae, "The Eiffel Tower is in the city of", k=3)
    >>> len(v["latents"]) == len(v["tokens"]), len(v["latents"][1]) <= 3, v["hook"]
    (True, True, 'blocks.15.hook_resid_post')
    """
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 50:
        raise UsageError(f"k must be an integer 1..50, got {k!r}")
    ids = _prompt_ids(model, prompt)
    hook = sae.cfg.hook_name
    with torch.no_grad():
        _, cache = model.run_with_cache(ids[None], names=[hook])
        f = sae.encode(cache[hook][0]).float()  # [pos, d_sae]
    per_pos = []
    for row in f:
        v, i = row.topk(min(k, row.numel()))
        per_pos.append([[int(j), round(float(a), 4)] for a, j in zip(v, i) if float(a) > 0])
    rest = f[1:] if f.shape[0] > 1 else f
    best, where = rest.max(0)  # [d_sae]
    order = best.argsort(descending=True)[: 4 * k]
    off = 1 if f.shape[0] > 1 else 0
    top = [[int(j), round(float(best[j]), 4), int(where[j]) + off] for j in order if float(best[j]) > 0]
    return {"tokens": model._strs(ids.tolist()), "ids": ids.tolist(), "hook": hook, "d_sae": sae.cfg.d_sae,
            "latents": per_pos, "top": top}


def latent_effect(model: HookedModel, sae: Any, prompt: str, latent: int, mode: str = "ablate",
                  value: float = 10.0, max_new_tokens: int = 12, k: int = 8) -> dict[str, Any]:
    """Generation and next-token distribution of ``prompt`` before and after editing one SAE latent.

    ``mode``: ``ablate`` (the latent set to 0 at every position) or ``steer`` (``value`` added to it); the
    SAE is attached with its error term, so the activation changes by exactly ``Δf · W_dec[latent]``
    (:func:`uncover.sae.attach.attach_sae`). Also the latent's activation on each token.

    >>> e = latent_effect(model, sae, "The Eiffel Tower is in the city of", 7, "steer", 50.0, max_new_tokens=2)
    >>> e["before"]["top"][0][0], len(e["activation"]) == len(e["tokens"])
    (' Paris', True)
    """
    from uncover.sae.attach import attach_sae
    from uncover.steering.methods import generate

    if mode not in ("ablate", "steer"):
        raise UsageError(f"mode must be 'ablate' or 'steer', got {mode!r}")
    if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < sae.cfg.d_sae:
        raise UsageError(f"latent must be an integer 0..{sae.cfg.d_sae - 1}, got {latent!r}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"value must be a finite number, got {value!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 64:
        raise UsageError(f"max_new_tokens must be an integer 1..64, got {max_new_tokens!r}")
    ids = _prompt_ids(model, prompt)
    edit = {"ablate": [latent]} if mode == "ablate" else {"steer": {latent: float(value)}}
    with torch.no_grad():
        with attach_sae(model, sae) as att:
            before = model(ids[None])[0, -1]
        acts = att["hook_sae_acts_post"][0, :, latent]  # [pos]
        with attach_sae(model, sae, record=False, **edit):
            after = model(ids[None])[0, -1]
            gen_after = generate(model, [prompt], None, max_new_tokens)[0]
    gen_before = generate(model, [prompt], None, max_new_tokens)[0]
    return {"latent": latent, "mode": mode, "value": float(value), "hook": sae.cfg.hook_name,
            "tokens": model._strs(ids.tolist()), "activation": _r(acts),
            "before": {**_dist(before, model, k, []), "generation": gen_before},
            "after": {**_dist(after, model, k, []), "generation": gen_after}}


def result_view(result: Result) -> dict[str, Any]:
    """A result for the page: kind, title, summary, table (first rows), provenance and a dedicated ``view``.

    >>> import uncover
    >>> v = result_view(uncover.run("lens", model, prompt="The Eiffel Tower is in the city of"))
    >>> v["kind"], v["view"]["type"]
    ('LensResult', 'generic')
    """
    try:
        frame = result.to_frame()
        records = json.loads(frame.head(MAX_RECORDS).to_json(orient="records", default_handler=str))
        columns, n = [str(c) for c in frame.columns], len(frame)
    except NotImplementedError:
        records, columns, n = [], [], 0
    prov = result.provenance
    return {"kind": type(result).__name__, "title": result.title, "summary": result.summary(),
            "columns": columns, "records": records, "n_records": n,
            "provenance": prov.to_dict() if prov is not None else None, "view": _special(result)}


def _special(result: Result) -> dict[str, Any]:
    from uncover.patching.activation import PatchResult

    kind = type(result).__name__
    if kind == "PathPatchResult":
        return {"type": "patch", "grid": _r(result.grid), "str_tokens": [], "per": "head", "hook": "z",
                "first_diff": 0, "metric": result.metric, "normalised": result.normalised,
                "receivers": result.receivers}
    if kind == "CausalTraceResult":
        return {"type": "trace", "grids": {k: _r(g) for k, g in result.grids.items()},
                "str_tokens": result.str_tokens, "answer": result.answer, "n_prompts": result.n_prompts}
    if isinstance(result, PatchResult):
        return {"type": "patch", "grid": _r(result.grid), "str_tokens": result.str_tokens, "per": result.per,
                "hook": result.hook, "first_diff": result.first_diff, "metric": result.metric,
                "normalised": result.normalised}
    if kind == "Circuit":
        edges = result.top(min(MAX_EDGES, result.n_edges)).edges()
        return {"type": "circuit", "edges": [[s, r, round(float(v), 6)] for s, r, v in edges],
                "n_edges": result.n_edges, "method": result.method, "metric": result.metric}
    if kind == "SteerResult":
        return {"type": "steer", "prompts": result.prompts, "plain": result.plain, "steered": result.steered,
                "score_plain": result.score_plain, "score_steered": result.score_steered,
                "score_shift": round(result.score_shift, 6), "kl": result.kl,
                "neutral_tokens": result.neutral_tokens}
    if kind == "EditReport":
        return {"type": "edit", "rows": json.loads(json.dumps(result.rows, default=str))}
    if kind == "Comparison":
        return {"type": "compare", "titles": [result.a.title, result.b.title],
                "figures": [json.loads(figure_json(result.a)), json.loads(figure_json(result.b))]}
    return {"type": "generic"}


def figure_json(result: Result) -> str:
    """The result's plotly figure as JSON text (``"null"`` when it has none)."""
    try:
        fig = result.plot()
    except NotImplementedError:
        return "null"
    return fig.to_json()
