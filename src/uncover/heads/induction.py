"""Induction loss curve on repeated random tokens (Olsson et al. 2022, "In-context Learning and
Induction Heads").

A sequence of ``N`` random tokens cannot be predicted the first time; its second copy can be,
by looking back to the token after the earlier occurrence of the current token. A model with
induction heads has a much lower loss on the second repeat.

Positions are *predicted* token positions ``t`` (the loss of the logits at ``t - 1`` on token
``t``). The first repeat is ``t = 2 .. N`` (``t = 1`` would be predicting a random token from
BOS alone) and the second ``t = N + 2 .. 2N`` (``t = N + 1`` has no earlier occurrence of its
context), so both means cover ``N - 1`` equally (un)predictable-looking positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from uncover.core.errors import UncoverError
from uncover.core.results import Result

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel


@dataclass
class InductionLoss(Result):
    """Per-position loss on a sequence of random tokens repeated twice.

    Attributes:
        loss: ``[batch, 2 * seq_len]`` cross-entropy (nats) of the token at ``t = 1 .. 2N``.
        seq_len: ``N``, the length of one repeat.
        model_name: the model.
    """

    loss: torch.Tensor
    seq_len: int
    model_name: str = ""

    @property
    def title(self) -> str:
        return "Induction: loss on repeated random tokens" + (f" ({self.model_name})" if self.model_name else "")

    @property
    def mean_by_position(self) -> torch.Tensor:
        """``[2 * seq_len]`` loss averaged over the batch."""
        return self.loss.mean(0)

    @property
    def first(self) -> float:
        """Mean loss on the first repeat (``t = 2 .. N``)."""
        return float(self.loss[:, 1 : self.seq_len].mean())

    @property
    def second(self) -> float:
        """Mean loss on the second repeat (``t = N + 2 .. 2N``)."""
        return float(self.loss[:, self.seq_len + 1 :].mean())

    def summary(self) -> str:
        return (f"{self.loss.shape[0]} sequences of {self.seq_len} random tokens, repeated: mean loss "
                f"{self.first:.2f} nats on the first repeat, {self.second:.2f} on the second "
                f"({self.first - self.second:+.2f} in-context improvement)")

    def to_frame(self) -> pd.DataFrame:
        n = self.seq_len
        m = self.mean_by_position
        part = ["bos→first"] + ["first"] * (n - 1) + ["boundary"] + ["second"] * (n - 1)
        return pd.DataFrame({"position": range(1, 2 * n + 1), "repeat": part, "loss": m.tolist()})

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        n = self.seq_len
        fig = go.Figure(go.Scatter(x=list(range(1, 2 * n + 1)), y=self.mean_by_position.tolist(), mode="lines+markers",
                                   name="mean loss", hovertemplate="position %{x}: %{y:.2f} nats<extra></extra>"))
        fig.add_vrect(x0=n + 0.5, x1=2 * n + 0.5, fillcolor="#2471a3", opacity=0.08, line_width=0,
                      annotation_text="second repeat", annotation_position="top left")
        for lo, hi, v in ((2, n, self.first), (n + 2, 2 * n, self.second)):
            fig.add_trace(go.Scatter(x=[lo, hi], y=[v, v], mode="lines", line={"dash": "dash"},
                                     name=f"mean {v:.2f}"))
        fig.update_layout(title=self.title, xaxis_title="position of the predicted token",
                          yaxis_title="loss (nats)")
        return fig


def token_losses(model: HookedModel, tokens: torch.Tensor) -> torch.Tensor:
    """``[batch, pos - 1]`` cross-entropy of each next token (column ``t - 1`` is token ``t``).

    >>> token_losses(model, torch.tensor([[1, 2, 3]])).shape
    torch.Size([1, 2])
    """
    with torch.no_grad():
        logits = model(tokens).float()  # [batch, pos, d_vocab]
    logprobs = logits[:, :-1].log_softmax(-1)
    return -logprobs.gather(-1, tokens[:, 1:, None].to(logprobs.device))[..., 0].cpu()


def induction_loss(
    model: HookedModel, tokens: torch.Tensor | None = None, *, n: int = 8, seq_len: int = 20, seed: int = 0
) -> InductionLoss:
    """Loss per position on ``[batch, 1 + 2 * seq_len]`` repeated tokens (default ``repeated_tokens``).

    >>> r = induction_loss(model)
    >>> r.second < r.first
    True
    """
    from uncover.data.tasks import repeated_tokens

    if tokens is None:
        tokens = repeated_tokens(model, n=n, seq_len=seq_len, seed=seed)
    if tokens.dim() != 2 or tokens.shape[1] % 2 != 1 or tokens.shape[1] < 5:
        raise UncoverError("expected [batch, 1 + 2 * seq_len] token ids (BOS + two repeats), "
                           f"got {tuple(tokens.shape)}")
    seq = (tokens.shape[1] - 1) // 2
    if not torch.equal(tokens[:, 1 : 1 + seq], tokens[:, 1 + seq :]):
        raise UncoverError("the two halves after the first token differ; use data.tasks.repeated_tokens")
    return InductionLoss(token_losses(model, tokens), seq, model.name)
