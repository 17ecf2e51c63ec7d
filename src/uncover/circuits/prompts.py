"""Inputs of circuit discovery: clean/corrupt batches, answer tokens and the metrics on them.

A :class:`Prompts` holds a clean and a corrupt batch of equal token lengths (pair by
pair), each prompt's answer and wrong token, and the column of its last real token.
Metrics map last-position logits ``[rows, d_vocab]`` to one value per row; ``kl`` is the
KL divergence from the clean model's next-token distribution (ACDC's default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from uncover.core.errors import UncoverError
from uncover.hooks.decode import target_ids

if TYPE_CHECKING:
    from uncover.data.tasks import Task
    from uncover.hooks.hooked import HookedModel
    from uncover.hooks.tokens import Batch

METRICS = ("logit_diff", "prob", "logprob", "kl")


@dataclass
class Prompts:
    """Clean and corrupt prompts with their answers.

    Attributes:
        clean, corrupt: right-padded batches ``[batch, pos]`` with equal masks.
        answer, wrong: ``[batch]`` token ids of each prompt's answer and competing token.
        last: ``[batch]`` column of each prompt's last real token.
    """

    clean: Batch
    corrupt: Batch
    answer: torch.Tensor
    wrong: torch.Tensor
    last: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.clean.input_ids.shape[0])

    @classmethod
    def build(
        cls,
        model: HookedModel,
        clean: Sequence[str] | torch.Tensor,
        corrupt: Sequence[str] | torch.Tensor,
        answers: Sequence[str | int],
        wrongs: Sequence[str | int],
    ) -> Prompts:
        """Tokenize and check: every pair must have the same token count; answers one token each.

        >>> p = Prompts.build(model, ["When Mary and John went to the store, John gave it to"],
        ...                   ["When Mary and John went to the store, Mary gave it to"], [" Mary"], [" John"])
        >>> p.n
        1
        """
        cb, xb = model.tokenize(clean), model.tokenize(corrupt)
        if cb.input_ids.shape != xb.input_ids.shape or not torch.equal(cb.attention_mask, xb.attention_mask):
            lens_c, lens_x = cb.lengths.tolist(), xb.lengths.tolist()
            bad = [i for i, (a, b) in enumerate(zip(lens_c, lens_x)) if a != b]
            raise UncoverError(
                f"clean and corrupt prompts must have equal token counts pair by pair; pairs {bad[:5]} differ "
                f"(clean {[lens_c[i] for i in bad[:5]]} vs corrupt {[lens_x[i] for i in bad[:5]]} tokens)"
            )
        if len(answers) != cb.input_ids.shape[0] or len(wrongs) != cb.input_ids.shape[0]:
            raise UncoverError(f"need one answer and one wrong token per prompt ({cb.input_ids.shape[0]} prompts)")
        dev = model.device
        return cls(cb, xb, torch.tensor(target_ids(model, list(answers)), device=dev),
                   torch.tensor(target_ids(model, list(wrongs)), device=dev), cb.columns(-1)[:, 0])

    @classmethod
    def from_task(cls, model: HookedModel, task: Task, n: int | None = None) -> Prompts:
        """The first ``n`` pairs of a task (all when ``None``)."""
        pairs = task.pairs[:n] if n else task.pairs
        if not pairs:
            raise UncoverError(f"task {task.name!r} has no pairs")
        return cls.build(model, [p.clean for p in pairs], [p.corrupt for p in pairs],
                         [p.answer for p in pairs], [p.wrong for p in pairs])

    def last_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[rows, pos, d_vocab]`` → ``[rows, d_vocab]`` at each row's last real token.

        Rows may be several copies of the prompts (``rows = k * batch``).
        """
        rows = logits.shape[0]
        cols = self.last.repeat(rows // self.n)
        return logits[torch.arange(rows, device=logits.device), cols]


def metric_values(
    kind: str, logits: torch.Tensor, prompts: Prompts, reference: torch.Tensor | None = None
) -> torch.Tensor:
    """Metric per row of last-position ``logits`` ``[rows, d_vocab]`` (rows = k copies of the prompts).

    ``kind``: ``logit_diff`` (answer − wrong), ``prob``/``logprob`` of the answer, or ``kl``
    (``KL(reference ‖ logits)``, ``reference`` the clean model's last-position logits ``[batch, d_vocab]``).

    >>> from uncover.hooks.tokens import Batch
    >>> b = Batch(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
    >>> p = Prompts(b, b, torch.tensor([0]), torch.tensor([1]), torch.tensor([1]))
    >>> metric_values("logit_diff", torch.tensor([[3.0, 1.0]]), p)
    tensor([2.])
    """
    k = logits.shape[0] // prompts.n
    if kind == "logit_diff":
        a, w = prompts.answer.repeat(k), prompts.wrong.repeat(k)
        idx = torch.arange(logits.shape[0], device=logits.device)
        return logits[idx, a] - logits[idx, w]
    if kind in ("prob", "logprob"):
        lp = logits.float().log_softmax(-1)[torch.arange(logits.shape[0], device=logits.device),
                                             prompts.answer.repeat(k)]
        return lp.exp() if kind == "prob" else lp
    if kind == "kl":
        if reference is None:
            raise UncoverError("the kl metric needs the clean model's logits as reference")
        ref = reference.float().log_softmax(-1).repeat(k, 1)
        return (ref.exp() * (ref - logits.float().log_softmax(-1))).sum(-1)
    raise UncoverError(f"unknown metric {kind!r}; valid: {', '.join(METRICS)}")
