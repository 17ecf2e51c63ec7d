"""ROME: rank-one model editing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

A fact "subject → object" is recalled by an MLP at the subject's last token; its output
projection ``W`` ``[d_model, d_mlp]`` acts as a key–value memory. ROME

1. picks the layer: by default the one whose MLP restoration has the largest causal-tracing
   indirect effect at the last subject token, averaged over a few built-in facts
   (:func:`rome_layer`, cached per model);
2. computes the key ``k*``: the down projection's input (``blocks.{l}.mlp.hook_post``) at the
   last subject token, averaged over the prompt alone and the prompt after a few short
   model-generated prefixes (:func:`context_prefixes`, seeded);
3. optimises ``δ`` added to the MLP output at the last subject token so that the new object is
   predicted after every prefixed prompt, with a KL term keeping "{subject} is a" unchanged and
   a norm penalty plus clamp (:func:`optimise_delta`); the value is ``v* = W k* + δ``;
4. inserts the pair with the closed form ``W ← W + (v* − W k*) uᵀ / (uᵀ k*)``, ``u = C⁻¹ k*``,
   where ``C = E[k kᵀ]`` over the embedded corpus (:mod:`uncover.editing.stats`), so that
   ``W' k* = v*`` exactly and any key ``k`` with ``kᵀ C⁻¹ k* = 0`` keeps its value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.diverge import check_finite
from uncover.core.names import act_name
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
from uncover.editing.stats import damped, layer_mom2, model_key, stats_dir
from uncover.hooks.harvest import capture
from uncover.hooks.tokens import Batch

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

# Layer found by :func:`rome_layer` (4 facts, 3 noise samples, 5-layer MLP window) for the embedded model;
# recompute with ``rome_layer(model, refresh=True)``.
# (normalised mean effect 0.185 at layer 1, 0.169 at layer 2, 0.111 at layer 6; docs/editing.md).
KNOWN_LAYERS: dict[str, int] = {"SmolLM2-135M-Instruct-30x576x1536-float32": 1}
TRACE_FACTS = (
    ("The Eiffel Tower", "{} is in the city of", " Paris"),
    ("The Colosseum", "{} is in the city of", " Rome"),
    ("Mount Fuji", "{} is located in the country of", " Japan"),
    ("BMW", "{} is a car company from the country of", " Germany"),
)
_PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You", "It", "In", "We", "She", "When")
_PREFIXES: dict[tuple[str, int, int, int], list[str]] = {}


@dataclass(frozen=True)
class RomeConfig:
    """Hyperparameters of ROME's value optimisation (Meng et al.'s GPT-2 XL values, scaled for small models)."""

    steps: int = 25
    """Adam steps on δ (stops early once the target's NLL is below ``stop_loss``)."""
    lr: float = 0.5
    """Adam learning rate."""
    kl_factor: float = 0.0625
    """Weight of KL(original ‖ edited) on the "{subject} is a" prompt."""
    weight_decay: float = 0.5
    """Weight of ‖δ‖ / ‖MLP output‖² (Meng et al.'s ``v_weight_decay``)."""
    clamp: float = 4.0
    """‖δ‖ is clamped to ``clamp × ‖MLP output‖``."""
    stop_loss: float = 0.05
    """Early stop when the mean target NLL falls below this."""
    prefixes: int = 5
    """Model-generated prefixes (plus the bare prompt) for the key and the value."""
    prefix_tokens: int = 8
    """Length of each generated prefix, in tokens."""
    damp: float = 1e-3
    """Ridge added to ``C`` (as a fraction of its mean diagonal)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.clamp <= 0 or self.prefixes < 0 or self.prefix_tokens < 1:
            raise EditError(f"bad ROME settings {self}: need steps ≥ 1, lr > 0, clamp > 0, prefixes ≥ 0, "
                            "prefix_tokens ≥ 1")


# ---- the closed form -------------------------------------------------------------------------------
def rank_one_update(W: torch.Tensor, k: torch.Tensor, v: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """ROME's update ``Δ = (v − W k) uᵀ / (uᵀ k)``, ``u = C⁻¹ k`` (float64), so ``(W + Δ) k = v``.

    ``W``: ``[d_out, d_in]``; ``k``: ``[d_in]``; ``v``: ``[d_out]``; ``C``: ``[d_in, d_in]`` SPD.

    >>> W, k, v = torch.zeros(2, 3), torch.tensor([1., 0., 0.]), torch.tensor([2., 3.])
    >>> rank_one_update(W, k, v, torch.eye(3))
    tensor([[2., 0., 0.],
            [3., 0., 0.]], dtype=torch.float64)
    """
    W, k, v, C = W.double(), k.double(), v.double(), C.double()
    u = torch.linalg.solve(C, k)
    return torch.outer(v - W @ k, u) / (u @ k)


# ---- which layer ---------------------------------------------------------------------------------
def rome_layer(
    model: HookedModel, *, samples: int = 3, window: int = 5, cache: str | Path | None = None, refresh: bool = False
) -> int:
    """The MLP layer with the largest causal-tracing effect at the last subject token (cached per model).

    Each fact's MLP indirect effects (restoring ``window`` MLP layers around each layer under
    subject noise, :func:`uncover.patching.causal_tracing.causal_trace`) at its last subject
    token are divided by the fact's clean − corrupted probability, averaged over
    :data:`TRACE_FACTS`, and the argmax taken. Facts whose corruption barely moves the
    probability (the trace's ``warning``) are left out; with none left it raises
    :class:`~uncover.editing.base.EditError` rather than pick a layer from noise.

    >>> rome_layer(model)  # doctest: +SKIP
    6
    """
    from uncover.patching.causal_tracing import causal_trace

    check_layer(model, 0)  # refuses mixture-of-experts families in one line before tracing
    key = model_key(model)
    path = stats_dir(cache) / key / "rome-layer.json"
    if not refresh:
        if path.is_file():
            return int(json.loads(path.read_text())["layer"])
        if key in KNOWN_LAYERS:
            return KNOWN_LAYERS[key]
    total = torch.zeros(model.cfg.n_layers)
    used = 0
    for subject, tmpl, obj in TRACE_FACTS:
        r = causal_trace(model, tmpl.format(subject), subject, obj, kind="mlp", samples=samples, window=window)
        if r.warning:  # a corruption that does not move p(answer) locates nothing
            continue
        total += r.grids["mlp"][:, r.subject[-1]] / max(r.drop, 1e-3)
        used += 1
    if not used:
        raise EditError("causal tracing cannot locate the facts in this model (the subject noise does not lower "
                        "p(object) for any built-in fact), so there is no automatic ROME layer; give layer=")
    layer = int(total.argmax())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"layer": layer, "effect": (total / used).tolist(), "facts": used,
                                "samples": samples, "window": window}))
    return layer


# ---- prompts, keys ----------------------------------------------------------------------------------
def context_prefixes(model: HookedModel, n: int = 5, length: int = 8, seed: int = 0) -> list[str]:
    """``[""]`` plus ``n`` short texts sampled from the model (seeded, cached per model), each ending in ". ".

    >>> context_prefixes(model, 2)  # doctest: +SKIP
    ['', 'The first time I saw the movie, I. ', 'Therefore, the number of people who. ']
    """
    key = (model_key(model), n, length, seed)
    if key not in _PREFIXES:
        out = [""]
        if n:
            starts = [_PREFIX_STARTS[i % len(_PREFIX_STARTS)] for i in range(n)]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                texts = model.generate(starts, max_new_tokens=length, do_sample=True, top_k=5)
            for s, t in zip(starts, texts):
                t = " ".join((s + t).replace("{", "(").replace("}", ")").split())
                out.append(t.rstrip(" .") + ". ")
        _PREFIXES[key] = out
    return list(_PREFIXES[key])


def encode(model: HookedModel, prefix: str, request: Request, subject: str | None = None) -> tuple[list[int], int]:
    """Token ids of ``prefix + prompt`` and the position of the subject's last token.

    The subject's characters are located from the template's ``{}`` (not by searching, so a
    prefix that happens to contain the subject cannot fool it).
    """
    subject = request.subject if subject is None else subject
    text = prefix + request.prompt.replace("{}", subject, 1)
    start = len(prefix) + request.prompt.index("{}")
    end = start + len(subject)
    enc = model.tokenizer(text, return_offsets_mapping=True)
    pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > start and a < end and b > a]
    if not pos:
        raise EditError(f"subject {subject!r} has no tokens in {text!r}")
    return list(enc["input_ids"]), pos[-1]


def pad(model: HookedModel, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids ``[batch, pos]`` and attention mask."""
    n = max(len(r) for r in rows)
    pad_id = model.tokenizer.pad_token_id or 0
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids.to(model.device), mask.to(model.device)


@torch.no_grad()
def subject_keys(model: HookedModel, layer: int, request: Request, prefixes: Sequence[str]) -> torch.Tensor:
    """Keys ``[len(prefixes), d_mlp]``: ``blocks.{layer}.mlp.hook_post`` at the last subject token of each prompt."""
    rows = [encode(model, p, request) for p in prefixes]
    ids, mask = pad(model, [r[0] for r in rows])
    name = act_name("post", layer)
    _, got = capture(model, Batch(ids, mask), [name])  # the blocks after the layer never run
    idx = torch.tensor([r[1] for r in rows], device=ids.device)
    return got[name][torch.arange(len(rows)), idx].double().cpu()


# ---- the value ---------------------------------------------------------------------------------
def optimise_delta(
    model: HookedModel,
    request: Request,
    target_ids: list[int],
    prefixes: Sequence[str],
    module: torch.nn.Module,
    cfg: RomeConfig,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """ROME's value step: ``δ`` ``[d_model]`` added to ``module``'s output at the last subject token.

    Loss: mean NLL of ``target_ids`` after each prefixed prompt + ``kl_factor`` ·
    KL(original ‖ edited) of the next token after "{subject} is a" + ``weight_decay`` · ‖δ‖ /
    ‖original output‖²; ‖δ‖ is clamped to ``clamp`` · ‖original output‖ after each step.
    ``module`` is the layer whose output gets δ (the MLP down projection for ROME, a block for MEMIT).
    """
    rows, lookup, targets = [], [], []
    for p in prefixes:
        ids, last = encode(model, p, request)
        rows.append(ids + target_ids[:-1])
        lookup.append(last)
        targets.append((len(ids) - 1, target_ids))
    essence = Request("{} is a", request.subject, request.target)
    kl_ids, kl_last = encode(model, "", essence)
    rows.append(kl_ids)
    lookup.append(kl_last)
    ids, mask = pad(model, rows)
    n_rw = len(prefixes)
    b_idx = torch.arange(len(rows), device=ids.device)
    l_idx = torch.tensor(lookup, device=ids.device)
    tgt_pos = torch.tensor([[s + j for j in range(len(t))] for s, t in targets], device=ids.device)
    tgt_tok = torch.tensor([t for _, t in targets], device=ids.device)
    d_model = model.cfg.d_model
    delta = torch.zeros(d_model, device=model.device, dtype=torch.float32, requires_grad=True)
    state: dict[str, torch.Tensor] = {}

    def hook(mod: torch.nn.Module, args: tuple, out: Any) -> Any:
        h = out[0] if isinstance(out, tuple) else out
        h = h.view(len(rows), -1, h.shape[-1])  # [batch, pos, d_model] also where the block flattens it (OPT)
        if "init" not in state:
            state["init"] = h[0, l_idx[0]].detach().float().clone()
        h = h.clone()
        h[b_idx, l_idx] = h[b_idx, l_idx] + delta.to(h.dtype)
        return (h.view(out[0].shape), *out[1:]) if isinstance(out, tuple) else h.view(out.shape)

    # logits only where the loss reads them (the unembedding is a fifth of this model's compute)
    keep = sorted({int(x) for x in tgt_pos.flatten().tolist()} | {kl_last})
    col = {p: i for i, p in enumerate(keep)}
    tgt_col = tgt_pos.cpu().apply_(lambda p: col[p]).to(ids.device)
    kw = {"logits_to_keep": torch.tensor(keep, device=ids.device)} if _keeps_logits(model) else {}
    if not kw:
        tgt_col, keep, col = tgt_pos, list(range(ids.shape[1])), {p: p for p in range(ids.shape[1])}
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    params = [p for p in model.model.parameters() if p.requires_grad]
    trace: list[float] = []
    handle = module.register_forward_hook(hook)
    try:
        for p in params:
            p.requires_grad_(False)
        kl_init = None
        for step in range(cfg.steps):
            opt.zero_grad()
            logits = model.model(input_ids=ids, attention_mask=mask, use_cache=False, **kw).logits.float()
            logp = logits[:n_rw].log_softmax(-1)
            rb = torch.arange(n_rw, device=ids.device).unsqueeze(1)
            nll = -logp[rb, tgt_col, tgt_tok].mean()
            kl_logp = logits[n_rw, col[kl_last]].log_softmax(-1)
            if kl_init is None:
                kl_init = kl_logp.detach()
            kl = torch.nn.functional.kl_div(kl_logp, kl_init, log_target=True, reduction="sum")
            init_norm = state["init"].norm()
            loss = nll + cfg.kl_factor * kl + cfg.weight_decay * delta.norm() / init_norm**2
            check_finite(step, loss=loss, lr=cfg.lr, what="the edit's value optimisation",
                         fix="lower the ROME learning rate (RomeConfig.lr)")
            trace.append(float(nll.detach()))
            if trace[-1] < cfg.stop_loss:
                break
            loss.backward()
            opt.step()
            with torch.no_grad():
                cap = cfg.clamp * init_norm
                if delta.norm() > cap:
                    delta.mul_(cap / delta.norm())
        check_finite(cfg.steps, params=[delta], lr=cfg.lr, what="the edit's value optimisation",
                     fix="lower the ROME learning rate (RomeConfig.lr)")
    finally:
        handle.remove()
        for p in params:
            p.requires_grad_(True)
    return delta.detach().double().cpu(), {"nll": trace, "init_norm": float(state["init"].norm()),
                                           "delta_norm": float(delta.detach().norm()),
                                           "delta": delta.detach().double().cpu().tolist()}


def _keeps_logits(model: HookedModel) -> bool:
    """Whether the HF model's forward takes ``logits_to_keep`` (compute logits at chosen positions only)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.model.forward).parameters


# ---- the edit ------------------------------------------------------------------------------------
def rome(
    model: HookedModel,
    prompt: str,
    subject: str,
    target: str,
    *,
    layer: int | None = None,
    mom2_samples: int = 20_000,
    cache: str | Path | None = None,
    config: RomeConfig | None = None,
    progress: bool = True,
) -> Edit:
    """Rewrite "``prompt`` with ``subject`` → ``target``" with one rank-one update of an MLP's down projection.

    ``prompt``: a template with ``{}`` for the subject, or a prompt containing the subject.
    ``layer``: the edited block (default :func:`rome_layer`). ``mom2_samples``: corpus tokens
    for the key statistics (cached under ``cache``, default ``$UNCOVER_CACHE/editing``).
    Everything is validated and computed before the single weight write, so a failure leaves
    the model untouched. Returns an applied :class:`~uncover.editing.base.Edit`.

    >>> e = rome(model, "{} is in the city of", "The Eiffel Tower", " Rome")  # doctest: +SKIP
    >>> model.generate("The Eiffel Tower is in the city of", 3)  # doctest: +SKIP
    ' Rome, Italy'
    >>> e.revert()  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    cfg = config or RomeConfig()
    req = Request.make(prompt, subject, target)
    tgt = check_request(model, req)
    layer = rome_layer(model, cache=cache) if layer is None else check_layer(model, layer)
    C = damped(layer_mom2(model, layer, mom2_samples=mom2_samples, cache=cache, progress=progress), cfg.damp)
    t1 = time.perf_counter()
    prefixes = context_prefixes(model, cfg.prefixes, cfg.prefix_tokens, cfg.seed)
    k = subject_keys(model, layer, req, prefixes).mean(0)
    module = model.adapter.mlp_part(layer, model.adapter.family.mlp_out)
    delta, info = optimise_delta(model, req, tgt, prefixes, module, cfg)
    W = down_proj(model, layer).detach().double().cpu()
    upd = rank_one_update(W, k, W @ k + delta, C)
    opts = {"mom2_samples": mom2_samples, "config": cfg.__dict__, "prefixes": prefixes, **info,
            "edit_seconds": time.perf_counter() - t1}
    return make_edit(model, "rome", [req], [layer], {down_proj_path(model, layer): to_param_layout(model, upd)},
                     opts, t0)
