"""Knowledge-neuron edits (Dai et al. 2022, "Knowledge Neurons in Pretrained Transformers").

Neurons (``blocks.{l}.mlp.hook_post`` units) that express a fact are found by integrated
gradients of the object's probability at the last position with respect to each neuron's
activation there, scaled from 0 to its value (``steps``-point midpoint Riemann sum):
``attr_i = a_i · mean_α ∂p/∂(α a_i)``. Neurons whose attribution exceeds ``threshold`` × the
prompt's largest attribution in at least ``share`` of the prompts (the prompt and its
paraphrases) are the fact's knowledge neurons.

Edits act on those neurons' value vectors (their columns of the down projection):
``suppress`` zeroes them, ``update`` adds ``λ · (e_new − e_old)``, with ``e`` the
unembedding direction of the object's first token (the paper's "updating facts").

Compact and self-contained; every layer's integrated gradients for one prompt run in a few
batched passes (rows of a batch scale the neurons of different layers).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from uncover.editing.base import (
    Edit,
    EditError,
    Request,
    check_layer,
    check_request,
    down_proj,
    down_proj_path,
    make_edit,
    to_param_layout,
)

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

MODES = ("update", "suppress")


def integrated_gradients(
    model: HookedModel, prompt: str | torch.Tensor, token: int, layers: Sequence[int] | None = None,
    *, steps: int = 16, max_rows: int = 96,
) -> torch.Tensor:
    """Attribution ``[n_layers, d_mlp]`` of each neuron at the last position to p(``token``) (0 for layers not asked).

    >>> ig = integrated_gradients(model, "The Eiffel Tower is in the city of", paris)  # doctest: +SKIP
    >>> ig.shape  # doctest: +SKIP
    torch.Size([30, 1536])
    """
    n, d = model.cfg.n_layers, model.cfg.d_mlp
    layers = list(range(n)) if layers is None else [check_layer(model, x) for x in layers]
    if steps < 1:
        raise EditError(f"steps must be ≥ 1, not {steps}")
    ids = model.tokenize(prompt).input_ids[:1]
    names = [f"blocks.{x}.mlp.hook_post" for x in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names=names)
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    out = torch.zeros(n, d)
    per = max(1, max_rows // steps)
    params = [p for p in model.model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        for c in range(0, len(layers), per):
            group = layers[c:c + per]
            acts = {x: cache[f"blocks.{x}.mlp.hook_post"][0, -1].float() for x in group}
            xs = {x: (alphas.to(acts[x].device)[:, None] * acts[x][None]).requires_grad_(True) for x in group}

            def hook(j: int, x: torch.Tensor):
                def fn(v: torch.Tensor, hp: object) -> torch.Tensor:
                    v = v.clone()
                    v[j * steps:(j + 1) * steps, -1] = x.to(v.dtype)
                    return v

                return fn

            with model.hooks([(f"blocks.{x}.mlp.hook_post", hook(j, xs[x])) for j, x in enumerate(group)]):
                logits = model.model(input_ids=ids.expand(steps * len(group), -1), use_cache=False).logits
            prob = logits[:, -1].float().softmax(-1)[:, token].sum()
            grads = torch.autograd.grad(prob, [xs[x] for x in group])
            for x, g in zip(group, grads):
                out[x] = (acts[x] * g.mean(0)).detach().cpu()
    finally:
        for p in params:
            p.requires_grad_(True)
    return out


def knowledge_neurons(
    model: HookedModel, prompts: Sequence[str], token: int, *, layers: Sequence[int] | None = None,
    steps: int = 16, threshold: float = 0.2, share: float = 0.5, max_neurons: int = 10,
) -> list[tuple[int, int, float]]:
    """``[(layer, neuron, mean attribution), ...]`` shared by ≥ ``share`` of ``prompts``, strongest first.

    >>> knowledge_neurons(model, ["The Eiffel Tower is in the city of"], paris)[:1]  # doctest: +SKIP
    [(26, 1043, 0.0213)]
    """
    if not prompts:
        raise EditError("no prompts given; knowledge neurons need the prompt (and paraphrases)")
    if not 0 < threshold <= 1 or not 0 < share <= 1:
        raise EditError(f"threshold and share must be in (0, 1], not {threshold} and {share}")
    attrs = torch.stack([integrated_gradients(model, p, token, layers, steps=steps) for p in prompts])
    hits = attrs > threshold * attrs.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    keep = hits.float().mean(0) >= share
    mean = attrs.mean(0)
    idx = keep.nonzero().tolist()
    found = sorted(((int(a), int(b), float(mean[a, b])) for a, b in idx), key=lambda t: -t[2])
    return found[:max_neurons]


def kn_edit(
    model: HookedModel,
    prompt: str,
    subject: str,
    target: str,
    *,
    mode: str = "update",
    old: str | None = None,
    paraphrases: Sequence[str] = (),
    layers: Sequence[int] | None = None,
    lam: float = 4.0,
    steps: int = 16,
    threshold: float = 0.2,
    share: float = 0.5,
    max_neurons: int = 10,
) -> Edit:
    """Find the knowledge neurons of the current answer and ``suppress`` them or ``update`` them towards ``target``.

    ``old``: the object to move away from (default: the model's top next token after the
    prompt). ``paraphrases``: more prompts (with the subject written out) that express the fact.

    >>> e = kn_edit(model, "{} is in the city of", "The Eiffel Tower", " Rome")  # doctest: +SKIP
    >>> e.options["neurons"][:2]  # doctest: +SKIP
    [[26, 1043, 0.0213], [24, 77, 0.0151]]
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise EditError(f"unknown kn mode {mode!r}; valid: {', '.join(MODES)}")
    req = Request.make(prompt, subject, target)
    new_ids = check_request(model, req)
    if layers is not None:
        layers = [check_layer(model, int(x)) for x in layers]
    text = req.text
    if old is None:
        with torch.no_grad():
            old_id = int(model(text)[0, -1].argmax())
    else:
        old_ids = model.tokenizer(old, add_special_tokens=False)["input_ids"]
        if not old.strip() or not old_ids:
            raise EditError(f"old object {old!r} tokenises to no tokens; give a word such as ' Paris'")
        old_id = old_ids[0]
    if old_id == new_ids[0]:
        raise EditError(f"the target {target!r} is already the model's answer; give another target")
    neurons = knowledge_neurons(model, [text, *paraphrases], old_id, layers=layers, steps=steps,
                                threshold=threshold, share=share, max_neurons=max_neurons)
    if not neurons:
        raise EditError("found no knowledge neurons; lower threshold or share, or add paraphrases")
    U = model.W_U.detach().double().cpu()
    direction = lam * (U[:, new_ids[0]] - U[:, old_id])  # [d_model]
    deltas: dict[str, torch.Tensor] = {}
    for layer in sorted({x for x, _, _ in neurons}):
        W = down_proj(model, layer).detach().double().cpu()  # [d_model, d_mlp]
        d = torch.zeros_like(W)
        for x, i, _ in neurons:
            if x == layer:
                d[:, i] = -W[:, i] if mode == "suppress" else direction
        deltas[down_proj_path(model, layer)] = to_param_layout(model, d)
    opts = {"mode": mode, "old": model.tokenizer.decode([old_id]), "neurons": [list(t) for t in neurons],
            "lam": lam, "steps": steps, "threshold": threshold, "share": share, "paraphrases": list(paraphrases)}
    return make_edit(model, f"kn-{mode}", [req], [x for x, _, _ in neurons], deltas, opts, t0)
