"""Knowledge-neuron edits (Dai et al. 2022, "Knowledge Neurons in Pretrained Transformers").

The neurons that express a fact are the knowledge neurons of :mod:`uncover.neurons.knowledge`
(integrated gradients of the old object's probability at the last position with respect to
each ``blocks.{l}.mlp.hook_post`` activation, filtered by ``threshold`` and ``share``). Pass an
already computed :class:`~uncover.neurons.knowledge.KnowledgeNeurons` to reuse it; otherwise
:func:`kn_edit` computes one with :func:`~uncover.neurons.knowledge.knowledge_neurons`.

Edits act on those neurons' value vectors (their columns of the down projection ``W``
``[d_model, d_mlp]``):

- ``suppress`` zeroes them (the paper's "erasing knowledge");
- ``update`` adds ``λ · sign(a_i) · d`` to column ``i``, with ``d`` the unit vector along
  ``u_new − u_old`` (the unembedding columns of the new and old objects' first tokens) and
  ``a_i`` the neuron's activation at the last position of the edit prompt (the paper's
  "updating facts", which subtracts the old object's embedding and adds the new one's; the
  sign matters for gated MLPs, whose neurons fire negative as often as positive). With
  ``lam=None`` the smallest ``λ`` is searched (doubling, then bisection, on the real model)
  for which ``log p(new) − log p(old) ≥ margin`` on the edit prompt (and the ``paraphrases``).

A value vector is read wherever its neuron fires, so neurons that fire for the relation
rather than the subject ("... is in the city of") carry the edit to other subjects. Our
addition (not in the paper): by default only neurons whose activation at the edit prompt
drops by more than ``specificity`` (half) when the subject is replaced by the placeholder
``contrast`` ("X is in the city of") are edited.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
from uncover.hooks import weights

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel
    from uncover.neurons.knowledge import KnowledgeNeurons

MODES = ("update", "suppress")


def default_layers(model: HookedModel) -> list[int]:
    """The upper half of the blocks, where Dai et al. find knowledge neurons (layers 15–29 of 30).

    >>> default_layers(model)
    [15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29]
    """
    n = model.cfg.n_layers
    return list(range(n // 2, n))


def kn_edit(
    model: HookedModel,
    prompt: str,
    subject: str,
    target: str,
    *,
    neurons: KnowledgeNeurons | None = None,
    mode: str = "update",
    old: str | None = None,
    paraphrases: Sequence[str] = (),
    layers: Sequence[int] | None = None,
    lam: float | None = None,
    margin: float = 1.0,
    steps: int = 16,
    threshold: float = 0.2,
    share: float = 0.5,
    max_neurons: int = 10,
    contrast: str | None = "X",
    specificity: float = 0.5,
) -> Edit:
    """Edit the fact ``prompt(subject) → old`` through its knowledge neurons: ``suppress`` or ``update`` to ``target``.

    ``neurons``: knowledge neurons already found for the old object (reused as they are);
    otherwise they are found on the edit prompt and ``paraphrases`` (with the subject written
    out) over ``layers`` (default :func:`default_layers`) with ``steps``, ``threshold`` and
    ``share``. The ``max_neurons`` most shared and strongest are edited. ``old``: the object
    to move away from (default: the neurons' target, else the model's top next token).
    ``contrast``: a placeholder subject (default ``"X"``); a neuron is edited only if its
    activation magnitude at the edit prompt exceeds the one at the prompt with ``contrast`` in
    place of the subject by more than ``specificity`` × the former (``None``: no filter).
    ``lam``: the value change per neuron (norm of the added vector); ``None`` searches the
    smallest one that gives the new object a ``margin`` (nats) over the old on every prompt.

    >>> e = kn_edit(model, "{} is in the city of", "The Eiffel Tower", " Rome")  # doctest: +SKIP
    >>> e.options["neurons"][:2]  # doctest: +SKIP
    [[28, 1095], [29, 1066]]
    >>> e.revert()  # doctest: +SKIP
    """
    from uncover.neurons.knowledge import knowledge_neurons

    t0 = time.perf_counter()
    if mode not in MODES:
        raise EditError(f"unknown kn mode {mode!r}; valid: {', '.join(MODES)}")
    if max_neurons < 1 or (lam is not None and lam <= 0) or margin <= 0:
        raise EditError(f"max_neurons, lam and margin must be > 0, not {max_neurons}, {lam} and {margin}")
    if not 0 <= specificity < 1:
        raise EditError(f"specificity must be in [0, 1), not {specificity}")
    req = Request.make(prompt, subject, target)
    new_ids = check_request(model, req)
    prompts = [req.text, *paraphrases]
    old_id = _old_id(model, req.text, old, neurons)
    if old_id == new_ids[0]:
        raise EditError(f"the target {target!r} is already the object being replaced; give another target")
    reused = neurons is not None
    if neurons is None:
        layers = default_layers(model) if layers is None else [check_layer(model, int(x)) for x in layers]
        neurons = knowledge_neurons(model, prompts, old_id, layers=layers, steps=steps, threshold=threshold,
                                    share=share, layers_per_pass=8)
    elif layers is not None:
        raise EditError("give either neurons (already found) or layers to search, not both")
    found = [(check_layer(model, int(x)), int(i)) for x, i in neurons.neurons]
    bad = [n for n in found if not 0 <= n[1] < model.cfg.d_mlp]
    if bad:
        raise EditError(f"neurons {bad} out of range; valid indices 0 to {model.cfg.d_mlp - 1}")
    if not found:
        raise EditError("found no knowledge neurons; lower threshold or share, or search more layers")
    acts = _last_acts(model, req.text, found)
    if contrast is not None:
        base = _last_acts(model, req.prompt.replace("{}", contrast, 1), found)
        found = [n for n in found if abs(acts[n]) - abs(base[n]) > specificity * abs(acts[n])]
        if not found:
            raise EditError(f"none of the {len(neurons.neurons)} knowledge neurons is specific to the subject "
                            f"(specificity {specificity}); lower specificity or give contrast=None")
    chosen = found[:max_neurons]
    if mode == "suppress":
        deltas = _deltas(model, chosen, lambda layer, i, w: -w)
        lam_used = None
    else:
        signs = {n: 1.0 if acts[n] >= 0 else -1.0 for n in chosen}
        U = model.W_U.detach().double().cpu()  # [d_model, d_vocab]
        d = U[:, new_ids[0]] - U[:, old_id]
        d = d / d.norm().clamp_min(1e-12)  # [d_model]

        dirs = {x: value_direction(model, x, d) for x in {x for x, _ in chosen}}

        def update(lam_: float) -> dict[str, torch.Tensor]:
            return _deltas(model, chosen, lambda layer, i, w: lam_ * signs[(layer, i)] * dirs[layer])

        lam_used = lam if lam is not None else _search(model, prompts, old_id, new_ids[0], update, margin)
        deltas = update(lam_used)
    opts = {"mode": mode, "old": model.tokenizer.decode([old_id]), "neurons": [list(n) for n in chosen],
            "attributed_layers": list(neurons.layers), "lam": lam_used, "margin": margin if lam is None else None,
            "steps": None if reused else steps, "reused_neurons": reused, "threshold": neurons.threshold,
            "share": neurons.share, "contrast": contrast, "specificity": specificity if contrast is not None else None,
            "paraphrases": list(paraphrases)}
    return make_edit(model, f"kn-{mode}", [req], [x for x, _ in chosen], deltas, opts, t0)


def _old_id(model: HookedModel, text: str, old: str | None, neurons: KnowledgeNeurons | None) -> int:
    if old is not None:
        ids = model.tokenizer(old, add_special_tokens=False)["input_ids"]
        if not old.strip() or not ids:
            raise EditError(f"old object {old!r} tokenises to no tokens; give a word such as ' Paris'")
        if neurons is not None and ids[0] != neurons.target_id:
            raise EditError(f"the knowledge neurons given are for {neurons.target!r}, not the old object {old!r}")
        return int(ids[0])
    if neurons is not None:
        return int(neurons.target_id)
    with torch.no_grad():
        return int(model(text)[0, -1].argmax())


def value_direction(model: HookedModel, layer: int, d: torch.Tensor) -> torch.Tensor:
    """Unit direction of a value-vector change that moves block ``layer``'s residual output along ``d``.

    Without a post-feedforward norm the down projection's output joins the residual as it is,
    so the direction is ``d``. With one (Gemma 2/3: ``y = w ⊙ x / rms(x)``) a small change
    ``ε`` of the output ``x`` reaches the residual as ``w ⊙ ε / rms(x)`` (minus a component
    along ``x``), so the value vector moves along ``d / w`` instead: the edit lands on what the
    block adds to the residual, not on a tensor the norm rescales per dimension.

    >>> d = torch.ones(model.cfg.d_model, dtype=torch.float64)
    >>> torch.allclose(value_direction(model, 0, d), d / d.norm())  # Llama: no post-norm
    True
    """
    path = model.adapter.family.mlp_post_norm
    if path is not None:
        w, _, _ = model.adapter.norm_params(model.adapter.sub(layer, path))
        if w is not None:
            w = w.detach().double().cpu()
            floor = 1e-3 * float(w.abs().mean())
            safe = torch.where(w.abs() < floor, torch.where(w < 0, -floor, floor), w)  # no division by ~0
            d = d / safe
    return d / d.norm().clamp_min(1e-12)


def _last_acts(model: HookedModel, text: str, neurons: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """Activation of each neuron at the last position of ``text``."""
    names = sorted({act_name("post", x) for x, _ in neurons})
    with torch.no_grad():
        _, cache = model.run_with_cache(text, names=names)
    return {(x, i): float(cache[act_name("post", x)][0, -1, i]) for x, i in neurons}


def _deltas(model: HookedModel, chosen: list[tuple[int, int]], column) -> dict[str, torch.Tensor]:
    """``{down-proj path: delta}`` with column ``i`` of layer ``x`` set to ``column(x, i, W[:, i])``."""
    out: dict[str, torch.Tensor] = {}
    for layer in sorted({x for x, _ in chosen}):
        W = down_proj(model, layer).detach().double().cpu()  # [d_model, d_mlp]
        delta = torch.zeros_like(W)
        for x, i in chosen:
            if x == layer:
                delta[:, i] = column(x, i, W[:, i])
        out[down_proj_path(model, layer)] = to_param_layout(model, delta)
    return out


def _gap(model: HookedModel, prompts: list[str], old_id: int, new_id: int) -> float:
    """The smallest ``log p(new) − log p(old)`` (first tokens) over ``prompts``."""
    with torch.no_grad():
        lp = torch.stack([model(p)[0, -1].float().log_softmax(-1) for p in prompts])
    return float((lp[:, new_id] - lp[:, old_id]).min())


def _search(model: HookedModel, prompts: list[str], old_id: int, new_id: int, update, margin: float,
            start: float = 1.0, iters: int = 7, max_steps: int = 14) -> float:
    """Smallest ``λ`` (to a factor ``1 + 2^-iters``) whose edit reaches ``margin``; restores the model each try."""

    def ok(lam: float) -> bool:
        deltas = update(lam)
        saved = weights.snapshot(model, deltas)  # before the write: an interrupt anywhere below restores it
        try:
            apply_deltas(model, deltas)
            return _gap(model, prompts, old_id, new_id) >= margin
        finally:
            weights.restore(model, saved)

    lo, hi = start, start
    if ok(start):  # halve until it fails
        for _ in range(max_steps):
            lo /= 2
            if not ok(lo):
                break
            hi = lo
        else:
            return hi
    else:  # double until it succeeds
        for _ in range(max_steps):
            hi *= 2
            if ok(hi):
                break
            lo = hi
        else:
            raise EditError(f"no value change up to λ = {hi:g} gives the new object a {margin} nat margin; "
                            "give more neurons (max_neurons), other layers, or lam")
    for _ in range(iters):  # ok(hi) and not ok(lo)
        mid = (lo + hi) / 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi
