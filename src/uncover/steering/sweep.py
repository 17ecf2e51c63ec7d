"""Strength sweeps: the targeted property against side effects, per steering strength.

For each strength the steered model continues the prompts (greedy); a scorer (by default
the small sentiment lexicon below, defined by the project) rates the continuations. Side
effects are measured on neutral text (the embedded corpus): the mean per-token
``KL(unsteered ‖ steered)`` of next-token distributions with the steering applied at every
position, and fluency as the mean negative log-likelihood of the steered continuations
under the *unsteered* model (lower is more fluent). Turner et al. 2023 and Rimsky et al.
2024 report these same two axes (effect, and capability cost).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from uncover.core.errors import UncoverError
from uncover.core.results import Result
from uncover.steering.methods import Steering, generate, steering

POSITIVE_WORDS = frozenset(
    "good great excellent wonderful amazing fantastic lovely love loved happy glad delightful brilliant best "
    "beautiful nice enjoy enjoyed fun perfect awesome pleasure pleasant excited exciting success successful "
    "friendly kind hope positive favorite favourite incredible impressive joy proud thank thanks".split())
NEGATIVE_WORDS = frozenset(
    "bad terrible awful horrible hate hated sad angry disgusting dreadful worst poor boring disappointing "
    "disappointed annoying miserable pathetic ugly fail failed failure wrong stupid painful hurt problem "
    "problems negative unfortunately sorry worse nasty broken difficult joke disaster".split())


def lexicon_sentiment(text: str) -> float:
    """(positive − negative word count) / number of words; 0 for no words.

    >>> lexicon_sentiment("a great and lovely day"), lexicon_sentiment("awful")
    (0.4, -1.0)
    """
    words = re.findall(r"[a-z']+", text.lower())
    if not words:
        return 0.0
    return (sum(w in POSITIVE_WORDS for w in words) - sum(w in NEGATIVE_WORDS for w in words)) / len(words)


@dataclass
class SweepResult(Result):
    """Per strength: the property score, KL on neutral text and fluency, with the generations.

    Attributes:
        method: the steering method's name.
        scales: strengths (multiples of the steering value's own strength; 0 = unsteered).
        score: mean property score of the continuations per scale.
        kl: mean per-token KL(unsteered ‖ steered) on neutral text per scale (nats).
        fluency: mean NLL of the steered continuations under the unsteered model per scale (nats/token).
        prompts: the prompts; generations: per scale, one continuation per prompt.
    """

    method: str
    scales: list[float]
    score: list[float]
    kl: list[float]
    fluency: list[float]
    prompts: list[str]
    generations: list[list[str]]

    @property
    def title(self) -> str:
        return f"steering sweep ({self.method}): property vs side effects"

    def summary(self) -> str:
        lines = [self.title]
        for s, sc, kl, fl in zip(self.scales, self.score, self.kl, self.fluency):
            lines.append(f"  scale {s:+7.2f}  score {sc:+.3f}  KL {kl:.4f}  NLL {fl:.3f}")
        return "\n".join(lines)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"scale": self.scales, "score": self.score, "kl": self.kl, "fluency_nll": self.fluency,
                             "example": [g[0] if g else "" for g in self.generations]})

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("effect and cost by strength", "trade-off"))
        fig.add_trace(go.Scatter(x=self.scales, y=self.score, mode="lines+markers", name="property score"), 1, 1)
        fig.add_trace(go.Scatter(x=self.scales, y=self.kl, mode="lines+markers", name="KL on neutral text"), 1, 1)
        fig.add_trace(go.Scatter(x=self.scales, y=self.fluency, mode="lines+markers", name="NLL (fluency)"), 1, 1)
        fig.add_trace(go.Scatter(x=self.kl, y=self.score, mode="lines+markers+text", name="trade-off",
                                 text=[f"{s:g}" for s in self.scales], textposition="top center"), 1, 2)
        fig.update_xaxes(title_text="strength", row=1, col=1)
        fig.update_xaxes(title_text="KL on neutral text (nats/token)", row=1, col=2)
        fig.update_yaxes(title_text="property score", row=1, col=2)
        fig.update_layout(title=self.title, height=450)
        return fig


def _kl(model, steer: Steering, blocks: torch.Tensor, ref: torch.Tensor) -> float:
    with torch.no_grad(), steering(model, steer):
        lp = model(blocks).float().log_softmax(-1)
    return float((ref.exp() * (ref - lp)).sum(-1).mean())


def _nll(model, prompts: Sequence[str], conts: Sequence[str]) -> float:
    tot, n = 0.0, 0
    for p, c in zip(prompts, conts):
        a = model.tokenizer(p)["input_ids"]
        full = model.tokenizer(p + c)["input_ids"]
        if len(full) <= len(a):
            continue
        with torch.no_grad():
            lp = model(torch.tensor([full])).float().log_softmax(-1)[0]
        idx = torch.arange(len(a), len(full))
        tot += float(-lp[idx - 1, torch.tensor(full)[idx]].sum())
        n += len(full) - len(a)
    return tot / max(n, 1)


def sweep(
    model, steer: Steering, prompts: Sequence[str], scales: Sequence[float] = (0.0, 1.0, 2.0, 4.0), *,
    scorer: Callable[[str], float] = lexicon_sentiment, neutral: torch.Tensor | None = None, max_new_tokens: int = 16,
    method: str = "",
) -> SweepResult:
    """Score continuations and side effects for each strength ``scale × steer``.

    ``neutral``: ``[n, len]`` token blocks (default: 4 held-out blocks of 64 tokens of the embedded corpus).

    >>> from uncover.data.corpus import token_blocks
    >>> from uncover.data.labelled import sentiment_pairs
    >>> from uncover.steering.methods import caa
    >>> pairs = sentiment_pairs(8)
    >>> neutral = token_blocks(model, block_len=32, split="heldout")[:1]
    >>> r = sweep(model, caa(model, pairs.positive, pairs.negative, [12]), ["My day was"], [0, 4], neutral=neutral,
    ...           max_new_tokens=4)
    >>> r.kl[0] == 0 < r.kl[1]
    True
    """
    if not prompts:
        raise UncoverError("no prompts to steer")
    if neutral is None:
        from uncover.data.corpus import token_blocks

        neutral = token_blocks(model, block_len=64, split="heldout")[:4]
    with torch.no_grad():
        ref = model(neutral).float().log_softmax(-1)
    out = SweepResult(method or type(steer).__name__, [float(s) for s in scales], [], [], [], list(prompts), [])
    for s in scales:
        st = steer.scaled(float(s)) if s != 0 else None
        gens = generate(model, list(prompts), st, max_new_tokens=max_new_tokens)
        out.generations.append(gens)
        out.score.append(sum(scorer(g) for g in gens) / len(gens))
        out.kl.append(0.0 if st is None else _kl(model, st, neutral, ref))
        out.fluency.append(_nll(model, prompts, gens))
    return out
