"""Steered and unsteered continuations of the same prompts, side by side, with the effect and its cost.

Owns :class:`SteerResult` (what ``uncover steer`` shows) and :func:`side_by_side`, which
generates greedily from each prompt twice, without and with a :class:`Steering`; the model
is restored after the steered run (see :func:`uncover.steering.methods.steering`). Like the
strength sweep (:mod:`uncover.steering.sweep`), it scores the continuations with the sentiment
lexicon (the property) and measures the cost as the mean per-token ``KL(unsteered ‖ steered)``
of next-token distributions on neutral text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from uncover.core.results import Result
from uncover.steering.methods import Steering, generate
from uncover.steering.sweep import _kl, lexicon_sentiment


@dataclass
class SteerResult(Result):
    """Continuations of each prompt with and without steering.

    Attributes:
        method: how the model was steered (``actadd``, ``caa``, ``ablate`` or ``vector <file>``).
        layers: the layers steered at.
        prompts: the prompts, in order.
        plain: the unsteered continuation of each prompt.
        steered: the steered continuation of each prompt.
        score_plain, score_steered: the property score of each continuation (the sweep's sentiment
            lexicon, :func:`uncover.steering.sweep.lexicon_sentiment`: positive minus negative words per word).
        kl: mean per-token ``KL(unsteered ‖ steered)`` of the next-token distributions on neutral text, in
            nats (``None`` when no neutral text was given).
        neutral_tokens: how many neutral-text positions the KL averages over.

    >>> r = SteerResult("actadd", [6], ["I think"], [" it is"], [" it was lovely"], [0.0], [0.25], 0.1, 64)
    >>> r.to_frame().columns.tolist()
    ['prompt', 'unsteered', 'steered', 'score_unsteered', 'score_steered']
    >>> round(r.score_shift, 2)
    0.25
    """

    method: str
    layers: list[int]
    prompts: list[str]
    plain: list[str]
    steered: list[str]
    score_plain: list[float] = field(default_factory=list)
    score_steered: list[float] = field(default_factory=list)
    kl: float | None = None
    neutral_tokens: int = 0

    @property
    def score_shift(self) -> float:
        """Mean property score of the steered continuations minus that of the unsteered ones."""
        if not self.score_steered:
            return 0.0
        return (sum(self.score_steered) - sum(self.score_plain)) / len(self.score_steered)

    @property
    def title(self) -> str:
        return f"steering with {self.method} at layer(s) {self.layers}"

    def summary(self) -> str:
        lines = [self.title]
        if self.score_steered:
            lines.append(f"sentiment score {sum(self.score_plain) / len(self.score_plain):+.3f} -> "
                         f"{sum(self.score_steered) / len(self.score_steered):+.3f} (shift {self.score_shift:+.3f})")
        if self.kl is not None:
            lines.append(f"KL(unsteered || steered) on neutral text: {self.kl:.4f} nats/token "
                         f"({self.neutral_tokens} positions)")
        for p, a, b in zip(self.prompts, self.plain, self.steered):
            lines += [f"prompt:    {p!r}", f"  plain:   {a!r}", f"  steered: {b!r}"]
        return "\n".join(lines)

    def to_frame(self):
        import pandas as pd

        n = len(self.prompts)
        return pd.DataFrame({"prompt": self.prompts, "unsteered": self.plain, "steered": self.steered,
                             "score_unsteered": self.score_plain or [None] * n,
                             "score_steered": self.score_steered or [None] * n})

    def plot(self):
        import plotly.graph_objects as go

        fig = go.Figure(go.Table(header={"values": ["prompt", "unsteered", "steered"]},
                                 cells={"values": [self.prompts, self.plain, self.steered], "align": "left"}))
        fig.update_layout(title=self.title)
        return fig


def side_by_side(model: Any, prompts: Sequence[str], steer: Steering, *, method: str, layers: Sequence[int],
                 max_new_tokens: int = 20, neutral: torch.Tensor | None = None) -> SteerResult:
    """Greedy continuations of ``prompts`` without and with ``steer``, their scores and the KL on neutral text.

    ``neutral``: ``[n, len]`` token blocks of neutral text (e.g. :func:`uncover.data.corpus.token_blocks` of the
    held-out split) on which ``KL(unsteered ‖ steered)`` is measured, steering applied as in the forward pass
    of a prompt; ``None`` leaves ``kl`` unset.

    >>> from uncover.data.corpus import token_blocks
    >>> from uncover.steering.methods import actadd
    >>> st = actadd(model, "Love", "Hate", layer=6, coeff=5)
    >>> neutral = token_blocks(model, block_len=32, split="heldout")[:1]
    >>> r = side_by_side(model, ["I hate you because"], st, method="actadd", layers=[6], max_new_tokens=4,
    ...                  neutral=neutral)
    >>> len(r.steered), r.kl > 0, r.neutral_tokens
    (1, True, 32)
    """
    prompts = list(prompts)
    plain = generate(model, prompts, None, max_new_tokens)
    steered = generate(model, prompts, steer, max_new_tokens)
    kl, n = None, 0
    if neutral is not None and neutral.numel():
        with torch.no_grad():
            ref = model(neutral).float().log_softmax(-1)  # [n, len, d_vocab]
        kl, n = _kl(model, steer, neutral, ref), int(neutral.numel())
    return SteerResult(method, [int(la) for la in layers], prompts, plain, steered,
                       [lexicon_sentiment(t) for t in plain], [lexicon_sentiment(t) for t in steered], kl, n)
