"""The prompt explorer's view: tokens, next-token distribution, logit-lens heatmap, attention, DLA, from one forward.

:func:`prompt_view` runs the model once, caching what every widget reads (each head's pattern, the residual
stream at each layer boundary, the hook values of direct logit attribution), and reads all of it from that
cache: the lens heatmap decodes the cached residuals (the final boundary is the model's own logits, reused),
and DLA takes the same cache (:func:`uncover.attribution.dla.direct_logit_attribution` with ``cache=``).

The heatmap is the view's largest cost: one unembedding per layer boundary and position (31 × 20 rows of
49,152 logits for a 20-token prompt on the embedded model). :func:`lens_top1` keeps it to one matrix product
per chunk of rows, with the top-1 probability computed in place as ``1 / Σ exp(logit - max)`` (no softmax
copies, no KL: the page does not show it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UsageError
from uncover.core.names import act_name
from uncover.serve.common import MAX_TOKENS, dist, rounded, token_id, token_strs

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

#: rows of logits decoded at once by :func:`lens_top1` (bounds its memory: 640 × 49,152 float32 = 126 MB)
LENS_CHUNK = 640


def lens_top1(model: HookedModel, resid: torch.Tensor, chunk: int = LENS_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 token and its probability of the model's own decoding of residual vectors ``[rows, d_model]``.

    The logits of each chunk of rows are :func:`uncover.hooks.decode.decode_resid` (final norm, unembedding,
    bias, scale, soft-cap); the top token is their argmax and its probability ``1 / Σ_v exp(l_v - max l)``,
    computed in place on the one logits buffer. Returns ``ids`` ``[rows]`` and ``probs`` ``[rows]``.

    >>> from uncover.hooks.decode import decode_resid
    >>> resid = torch.randn(3, model.cfg.d_model)
    >>> ids, probs = lens_top1(model, resid)
    >>> p = torch.softmax(decode_resid(model, resid).float(), -1)
    >>> torch.equal(ids, p.argmax(-1)), torch.allclose(probs, p.amax(-1))
    (True, True)
    """
    from uncover.hooks.decode import decode_resid

    ids = torch.empty(resid.shape[0], dtype=torch.long)
    probs = torch.empty(resid.shape[0])
    for start in range(0, resid.shape[0], chunk):
        logits = decode_resid(model, resid[start : start + chunk]).float()  # [rows, d_vocab], a fresh tensor
        ids[start : start + chunk] = logits.argmax(-1).cpu()
        top = logits.amax(-1, keepdim=True)
        probs[start : start + chunk] = logits.sub_(top).exp_().sum(-1).reciprocal_().cpu()
    return ids, probs


def _top1_of_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 ids and probabilities of logits ``[rows, d_vocab]`` (the model's own final-boundary row)."""
    logits = logits.float()
    top = logits.amax(-1, keepdim=True)
    return logits.argmax(-1).cpu(), (logits - top).exp_().sum(-1).reciprocal_().cpu()


def prompt_view(
    model: HookedModel,
    prompt: str,
    answer: str | int | None = None,
    wrong: str | int | None = None,
    k: int = 10,
    lens_positions: str = "all",
) -> dict[str, Any]:
    """Everything the prompt explorer shows about ``prompt``, from one forward pass.

    ``answer``/``wrong``: the tokens (text or id) whose logit difference DLA explains; default the model's top
    two next tokens. Returns ``tokens``, ``top`` (next-token ``[token, id, prob]``), ``lens`` (``[layer, pos]``
    top-1 token and probability, the same numbers as ``logit_lens(..., k=1)``), ``attention``
    (``[layer][head][q][k]``) and ``dla`` (labels, contributions, the ``[layer, head]`` grid and the logit
    difference). ``lens_positions``: ``all`` (the heatmap over every position) or ``last``.

    >>> v = prompt_view(model, "The Eiffel Tower is in the city of")
    >>> v["top"][0][0], len(v["attention"]) == model.cfg.n_layers, v["lens"]["tokens"][-1][-1]
    (' Paris', True, ' Paris')
    """
    from uncover.attribution.dla import direct_logit_attribution, dla_names

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
    patterns = [act_name("pattern", layer) for layer in range(c.n_layers)]
    boundaries = [act_name("resid_pre", layer) for layer in range(c.n_layers)]  # the last boundary: the logits
    names = list(dict.fromkeys(patterns + boundaries + dla_names(model)))
    positions = list(range(len(ids))) if lens_positions == "all" else [len(ids) - 1]
    with torch.no_grad():
        out, cache = model.run_with_cache(ids[None], names=names)
        resid = torch.stack([cache[n][0, positions] for n in boundaries])  # [layer, pos, d_model]
        lens_ids, lens_p = lens_top1(model, resid.reshape(-1, resid.shape[-1]))
        last_ids, last_p = _top1_of_logits(out[0, positions])  # the final boundary is the model's output
        lens_ids = torch.cat([lens_ids.view(c.n_layers, -1), last_ids[None]])  # [layer + 1, pos]
        lens_p = torch.cat([lens_p.view(c.n_layers, -1), last_p[None]])
        logits = out[0, -1].float()  # [d_vocab]
        att = torch.stack([cache[n][0] for n in patterns])  # [layer, head, q, k]
        nxt = dist(logits, model, k, [])
        top2 = logits.topk(2).indices.tolist()
        a_id = token_id(model, answer, top2[0])
        w_id = token_id(model, wrong, top2[1])
        if a_id == w_id:
            raise UsageError("answer and wrong are the same token; pick two different tokens")
        dla = direct_logit_attribution(model, ids[None], a_id, w_id, cache=cache)
    flat = lens_ids.flatten().tolist()
    unique = sorted(set(flat))
    text = dict(zip(unique, token_strs(model, unique)))  # one decode per distinct token
    vocab = [text[i] for i in flat]
    width = len(positions)
    return {
        "tokens": token_strs(model, ids.tolist()),
        "ids": ids.tolist(),
        "top": nxt["top"],
        "lens": {
            "layers": list(range(c.n_layers + 1)),
            "positions": positions,
            "tokens": [vocab[i * width : (i + 1) * width] for i in range(c.n_layers + 1)],
            "probs": rounded(lens_p),
        },
        "attention": rounded(att, 3),
        "dla": {
            "answer": token_strs(model, [a_id])[0],
            "wrong": token_strs(model, [w_id])[0],
            "answer_id": a_id,
            "wrong_id": w_id,
            "labels": dla.labels,
            "contributions": rounded(dla.contributions[:, 0]),
            "heads": rounded(dla.head_grid()),
            "logit_diff": round(float(dla.logit_diff[0]), 5),
        },
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
    }
