"""DoLa: Decoding by Contrasting Layers (Chuang et al. 2024, "DoLa: Decoding by Contrasting Layers
Improves Factuality in Large Language Models").

At each step the next-token log-probabilities of the final layer are contrasted with those of
a *premature* layer, read through the model's own final norm and unembedding
(:func:`uncover.hooks.decode.decode_resid`). The premature layer is chosen per token among a
bucket of candidate layers as the one whose distribution is furthest from the final one in
Jensen–Shannon divergence. Only tokens passing the adaptive plausibility constraint
``p_final(x) ≥ α · max p_final`` (α = 0.1) are scored, by ``log p_final − log p_premature``;
the others get ``-inf``. An optional repetition penalty (as in ``transformers``: negative scores
times the penalty, positive ones divided by it) applies to tokens already in the sequence.

Layer ``l`` means the residual stream entering block ``l`` (``0`` = embeddings), like the index
of ``hidden_states`` in ``transformers``. Buckets follow ``transformers`` 4.x: ``"low"`` = even
layers of the first half (from 0 with tied embeddings, else 2), ``"high"`` = every other layer
of the second half (the last 20 layers, stepping by 2, for models deeper than 40).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name
from uncover.core.results import Result
from uncover.hooks.decode import decode_resid

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel

BUCKETS = ("low", "high")
Layers = str | Sequence[int]


def candidate_layers(model: HookedModel, layers: Layers = "high") -> list[int]:
    """Premature-layer candidates: a bucket (``"low"``, ``"high"``) or explicit layers in ``[0, n_layers)``.

    >>> candidate_layers(model, "high")
    [15, 17, 19, 21, 23, 25, 27, 29]
    """
    n = model.cfg.n_layers
    if isinstance(layers, str):
        if layers == "high":
            return list(range(n // 2, n, 2)) if n <= 40 else list(range(n - 20, n, 2))
        if layers == "low":
            start = 0 if getattr(model.model.config, "tie_word_embeddings", False) else 2
            if start >= n // 2:
                return [min(start, n - 1)]
            return list(range(start, n // 2, 2)) if n <= 40 else list(range(start, 20, 2))
        if layers.replace(",", "").replace(" ", "").isdigit():
            return candidate_layers(model, [int(x) for x in layers.split(",") if x.strip()])
        raise UncoverError(f"unknown DoLa layers {layers!r}; valid: {', '.join(BUCKETS)} or a list of layers "
                           f"in [0, {n})")
    out = [int(x) for x in layers]
    bad = [x for x in out if not 0 <= x < n]
    if not out or bad:
        raise UncoverError(f"DoLa premature layers must be in [0, {n}) (0 = embeddings; the final layer is {n}), "
                           f"got {out}; or use {', '.join(BUCKETS)}")
    return sorted(set(out))


def jensen_shannon(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence (nats) between log-distributions over the last axis.

    >>> lp = torch.log(torch.tensor([1.0, 0.0])); lq = torch.log(torch.tensor([0.0, 1.0]))
    >>> round(float(jensen_shannon(lp, lq)), 4) == round(math.log(2), 4)
    True
    """
    logm = torch.logaddexp(logp, logq) - math.log(2.0)

    def kl(la: torch.Tensor) -> torch.Tensor:
        p = la.exp()
        return torch.where(p > 0, p * (la - logm), torch.zeros_like(p)).sum(-1)

    return 0.5 * (kl(logp) + kl(logq))


def contrast(
    final_logits: torch.Tensor, premature_logits: torch.Tensor, alpha: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DoLa scores from final ``[batch, d_vocab]`` and candidate ``[n_cand, batch, d_vocab]`` logits.

    Returns ``(scores [batch, d_vocab], chosen [batch] (index into the candidates), jsd [batch, n_cand])``.

    >>> f = torch.tensor([[2.0, 1.0, -3.0]]); p = torch.tensor([[[0.0, 1.0, -3.0]], [[2.0, 1.0, -3.0]]])
    >>> scores, chosen, jsd = contrast(f, p)
    >>> chosen.tolist(), scores[0, 2].item()
    ([0], -inf)
    """
    if not 0.0 < alpha <= 1.0:
        raise UncoverError(f"alpha (the plausibility threshold) must be in (0, 1], not {alpha}")
    lf = torch.log_softmax(final_logits.float(), -1)
    lp = torch.log_softmax(premature_logits.float(), -1)
    jsd = jensen_shannon(lf.unsqueeze(0), lp).T  # [batch, n_cand]
    chosen = jsd.argmax(-1)
    base = lp[chosen, torch.arange(lf.shape[0], device=lf.device)]
    keep = lf >= lf.max(-1, keepdim=True).values + math.log(alpha)
    return torch.where(keep, lf - base, torch.full_like(lf, -math.inf)), chosen, jsd


def penalise_repeats(scores: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """``transformers``' repetition penalty on ``scores`` ``[batch, d_vocab]`` for tokens in ``ids`` ``[batch, pos]``.

    >>> penalise_repeats(torch.tensor([[2.0, -2.0, 1.0]]), torch.tensor([[0, 1]]), 2.0)
    tensor([[ 1., -4.,  1.]])
    """
    if penalty <= 0:
        raise UncoverError(f"repetition_penalty must be positive (1 = none), not {penalty}")
    if penalty == 1.0:
        return scores
    seen = scores.gather(-1, ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(-1, ids, seen)


def _layer_logits(
    model: HookedModel, inputs: Any, cand: list[int], past: Any = None, positions: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Final logits ``[batch, d_vocab]`` and candidate logits ``[n_cand, batch, d_vocab]`` at ``positions``."""
    store: dict[int, torch.Tensor] = {}

    def saver(layer: int):
        def fn(v: torch.Tensor, hp: Any) -> None:
            store[layer] = v.detach()

        return fn

    ids, mask = inputs
    kw: dict[str, Any] = {"use_cache": past is not None}
    if past is not None:  # the cache object is updated in place; transformers >= 5.x names the argument `cache`
        kw["cache" if "cache" in inspect.signature(model.model.forward).parameters else "past_key_values"] = past
    with torch.no_grad(), model.hooks([(act_name("resid_pre", li), saver(li)) for li in cand]):
        out = model.model(input_ids=ids, attention_mask=mask, **kw)
    rows = torch.arange(ids.shape[0], device=ids.device)
    col = torch.full_like(rows, ids.shape[1] - 1) if positions is None else positions
    with torch.no_grad():
        prem = torch.stack([decode_resid(model, store[li][rows, col]) for li in cand])
    return out.logits[rows, col], prem, past


def dola_scores(
    model: HookedModel, inputs: Any, layers: Layers = "high", alpha: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DoLa scores at each prompt's last real token.

    Returns ``(scores [batch, d_vocab], premature layer [batch], jsd [batch, n_cand])``.

    >>> scores, layer, jsd = dola_scores(model, "The capital of France is")
    """
    cand = candidate_layers(model, layers)
    b = model.tokenize(inputs)
    last = b.attention_mask.sum(1) - 1
    final, prem, _ = _layer_logits(model, (b.input_ids, b.attention_mask), cand, positions=last)
    scores, chosen, jsd = contrast(final, prem, alpha)
    return scores, torch.tensor(cand, device=chosen.device)[chosen], jsd


@dataclass
class DolaGeneration(Result):
    """Greedy DoLa generation of one prompt, with the premature layer chosen at each step."""

    prompt: str
    text: str
    """The generated continuation (special tokens dropped)."""
    token_ids: list[int]
    tokens: list[str]
    premature_layers: list[int]
    """The layer contrasted at each step."""
    jsd: list[list[float]]
    """``[step][candidate]`` Jensen–Shannon divergences to the final layer."""
    candidates: list[int]
    greedy_tokens: list[str]
    """What plain greedy decoding would pick at each step (given DoLa's prefix)."""
    alpha: float = 0.1
    repetition_penalty: float = 1.0

    @property
    def title(self) -> str:
        return f"DoLa generation — {self.prompt[:40]!r}"

    def summary(self) -> str:
        return f"{self.prompt!r} → {self.text!r} (premature layers {self.premature_layers})"

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame({"step": range(len(self.tokens)), "token": self.tokens, "token_id": self.token_ids,
                             "premature_layer": self.premature_layers, "greedy_token": self.greedy_tokens,
                             "max_jsd": [max(j) for j in self.jsd]})

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        x = [f"{i}:{t!r}" for i, t in enumerate(self.tokens)]
        fig = go.Figure(go.Heatmap(z=list(map(list, zip(*self.jsd))), x=x,
                                   y=[str(c) for c in self.candidates], colorscale="Viridis",
                                   colorbar={"title": "JSD (nats)"}))
        fig.add_trace(go.Scatter(x=x,
                                 y=[str(x) for x in self.premature_layers], mode="markers", name="chosen",
                                 marker={"color": "red", "symbol": "x", "size": 10}))
        fig.update_layout(title=self.title, xaxis_title="generated token", yaxis_title="candidate premature layer")
        return fig


def dola_generate(
    model: HookedModel,
    prompt: str | torch.Tensor,
    max_new_tokens: int = 20,
    *,
    layers: Layers = "high",
    alpha: float = 0.1,
    repetition_penalty: float = 1.0,
    contrastive: bool = True,
) -> DolaGeneration:
    """Greedy decoding of one prompt with DoLa scores (``contrastive=False``: plain greedy, same bookkeeping).

    >>> dola_generate(model, "The capital of France is", 5).text
    ' Paris.'
    """
    if max_new_tokens < 1:
        raise UncoverError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    cand = candidate_layers(model, layers)
    from transformers import DynamicCache

    b = model.tokenize(prompt)
    if b.input_ids.shape[0] != 1:
        raise UncoverError("dola_generate takes one prompt; use compare_decoding for several")
    ids, past = b.input_ids, DynamicCache()
    cur, mask = ids, torch.ones_like(ids)
    eos = getattr(model.tokenizer, "eos_token_id", None) if model.tokenizer is not None else None
    out_ids: list[int] = []
    layers_used: list[int] = []
    jsds: list[list[float]] = []
    greedy: list[int] = []
    for _ in range(max_new_tokens):
        final, prem, past = _layer_logits(model, (cur, mask), cand, past=past)
        scores, chosen, jsd = contrast(final, prem, alpha)
        if not contrastive:
            scores = torch.log_softmax(final.float(), -1)
        scores = penalise_repeats(scores, ids, repetition_penalty)
        nxt = int(scores.argmax(-1))
        out_ids.append(nxt)
        greedy.append(int(final.argmax(-1)))
        layers_used.append(cand[int(chosen)])
        jsds.append(jsd[0].tolist())
        ids = torch.cat([ids, torch.tensor([[nxt]], device=ids.device)], 1)
        cur, mask = ids[:, -1:], torch.ones_like(ids)
        if eos is not None and nxt == eos:
            break
    text = model.tokenizer.decode(out_ids, skip_special_tokens=True) if model.tokenizer is not None else ""
    return DolaGeneration(model.prompt_texts(b)[0], text, out_ids, model._strs(out_ids), layers_used, jsds, cand,
                          model._strs(greedy), alpha, repetition_penalty)
