"""Causal check of a probe direction: does moving along it change the output as predicted?

A probe shows that a property is *decodable*; intervening shows whether the model *uses*
the direction (Elazar et al. 2021, "Amnesic Probing"; Ravfogel et al. 2020). We add
``scale × ‖typical activation‖ × u`` along the unit direction ``u`` at one hook and at
all positions, and measure the mean log-probability of tokens that express the positive
class minus that of tokens expressing the negative class at each prompt's last position,
for several scales, and with the direction ablated (projected out). A direction the
model uses gives a curve that rises with the scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from uncover.core.errors import UncoverError
from uncover.core.results import Result
from uncover.hooks.interventions import Ablate, Add


@dataclass
class CausalCheck(Result):
    """Effect of adding a direction at one hook on a positive-vs-negative token score.

    Attributes:
        hook: where the direction was added.
        scales: the multiples of the typical residual norm that were added.
        score: ``[len(scales)]`` mean over prompts of ``mean logprob(positive) - mean logprob(negative)``.
        ablated: the same score with the direction projected out.
        positive, negative: the token strings.
    """

    hook: str
    scales: list[float]
    score: list[float]
    ablated: float
    positive: list[str]
    negative: list[str]

    @property
    def title(self) -> str:
        return f"causal check at {self.hook}"

    @property
    def monotonic(self) -> bool:
        """Whether the score never decreases as the scale grows."""
        return all(b >= a for a, b in zip(self.score, self.score[1:]))

    def summary(self) -> str:
        rows = ", ".join(f"{s:+g}: {v:+.3f}" for s, v in zip(self.scales, self.score))
        return (f"{self.title}: score (logprob {self.positive[:3]} - {self.negative[:3]}) by scale {rows}; "
                f"ablated {self.ablated:+.3f}; monotonic {self.monotonic}")

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"scale": self.scales, "score": self.score})

    def plot(self):
        import plotly.graph_objects as go

        fig = go.Figure(go.Scatter(x=self.scales, y=self.score, mode="lines+markers", name="added"))
        fig.add_hline(y=self.ablated, line_dash="dash", annotation_text="ablated")
        fig.update_layout(title=self.title, xaxis_title="scale (× typical norm)", yaxis_title="score")
        return fig


def _token_ids(model, words: Sequence[str]) -> list[int]:
    ids = [model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
    if not ids:
        raise UncoverError("give at least one token for each side")
    return ids


def causal_check(
    model,
    direction: torch.Tensor,
    hook: str,
    prompts: Sequence[str],
    positive: Sequence[str],
    negative: Sequence[str],
    scales: Sequence[float] = (-1.0, -0.5, 0.0, 0.5, 1.0),
) -> CausalCheck:
    """Score ``mean logprob(positive) - mean logprob(negative)`` at each prompt's end while adding
    ``scale × norm × direction`` at ``hook`` (``norm``: mean residual norm at that hook on ``prompts``).

    >>> from uncover.data.activations import collect
    >>> from uncover.data.labelled import sentiment_texts
    >>> from uncover.probing.linear import fit_probe
    >>> data = sentiment_texts()
    >>> acts = collect(model, data, ["blocks.8.hook_resid_post"], progress=False)
    >>> probe = fit_probe(acts["blocks.8.hook_resid_post"], data.y)
    >>> check = causal_check(model, probe.direction, "blocks.8.hook_resid_post", ["I think the movie was"],
    ...                      [" great"], [" bad"])
    >>> check.score[0] < check.score[-1]  # adding the direction raises " great" over " bad"
    True
    """
    if not prompts:
        raise UncoverError("empty dataset: no prompts for the causal check")
    u = direction.detach().float()
    if not bool(torch.isfinite(u).all()) or float(u.norm()) == 0.0:
        raise UncoverError("the direction must be finite and non-zero")
    u = u / u.norm()
    pos, neg = _token_ids(model, positive), _token_ids(model, negative)
    _, cache = model.run_with_cache(list(prompts), [hook])
    norm = float(cache[hook].norm(dim=-1)[model.tokenize(list(prompts)).attention_mask.bool()].mean())
    last = model.tokenize(list(prompts)).columns(-1)[:, 0]

    def score() -> float:
        with torch.no_grad():
            lp = model(list(prompts)).float().log_softmax(-1)
        lp = lp[torch.arange(len(prompts)), last]
        return float((lp[:, pos].mean(-1) - lp[:, neg].mean(-1)).mean())

    out = []
    for s in scales:
        with model.intervene([Add(hook, vector=u, scale=float(s) * norm)]):
            out.append(score())
    with model.intervene([Ablate(hook, direction=u)]):
        abl = score()
    return CausalCheck(hook, [float(s) for s in scales], out, abl, list(positive), list(negative))
