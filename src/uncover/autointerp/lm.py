"""A local language model as explainer and as scorer (the embedded SmolLM2-135M-Instruct by default).

:class:`LMExplainer` renders the explainer's prompt with the model's chat template, opens the answer
with :data:`~uncover.autointerp.prompts.EXPLAIN_PREFIX` (``words like "``) and continues it greedily
(deterministic); :func:`clean_explanation` turns the continuation into ``words like "a", "b"``.
:class:`LMScorer` reads the logits of the first answer token: the margin is ``logsumexp`` over
the ``Yes`` tokens minus ``logsumexp`` over the ``No`` tokens (``"Yes"``/``" Yes"`` and
``"No"``/``" No"``, those that are single tokens), one forward pass per prompt and no generation.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from uncover.autointerp.prompts import EXPLAIN_PREFIX, Messages, render
from uncover.core.errors import UncoverError

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def _need_tokenizer(model: HookedModel, what: str) -> None:
    if model.tokenizer is None:
        raise UncoverError(f"the {what} needs a model with a tokenizer (this one has none)")


def clean_explanation(text: str, limit: int = 5) -> str:
    """``words like "x", "y"`` from a continuation of ``... words like "``.

    The items are the spans a small model marked with ``<<...>>`` when it copied an example, else the
    quoted strings (the first one is closed by the continuation's first quote); repeats and items of
    more than 40 characters are dropped, at most ``limit`` are kept. Without any: the continuation's
    first line without marks and quotes (``"(empty)"`` when nothing is left).

    >>> clean_explanation('only", "also", "only" that repeat')
    'words like "only", "also"'
    >>> clean_explanation('<< evaluation of>> the atom<< yields>> that object')
    'words like "evaluation of", "yields"'
    """
    head = text.split("\n\n")[0]
    items = re.findall(r"<<(.*?)>>", head)
    if not items and '"' in head:
        first, _, rest = head.partition('"')
        items = [first, *re.findall(r'"([^"]*)"', rest)]
    out: list[str] = []
    for it in items:
        it = it.replace("<<", "").replace(">>", "").strip().strip(",.;:").strip()
        if it and len(it) <= 40 and it not in out:
            out.append(it)
    if not out:
        line = re.sub(r"<<|>>", "", head.strip().split("\n")[0]).strip(' "<>')
        return line[:120] or "(empty)"
    return "words like " + ", ".join(f'"{it}"' for it in out[:limit])


class LMExplainer:
    """Explains from a prompt by greedy continuation of ``EXPLAIN_PREFIX``.

    >>> from uncover.autointerp.prompts import explainer_messages
    >>> from uncover.autointerp.examples import Context
    >>> ex = LMExplainer(model, max_new_tokens=8)
    >>> isinstance(ex(explainer_messages([Context(["I", " ate"], [0.0, 1.0], [False, True])])), str)
    True
    """

    def __init__(self, model: HookedModel, max_new_tokens: int = 24):
        _need_tokenizer(model, "explainer")
        self.model, self.max_new_tokens = model, max_new_tokens

    def prompt(self, messages: Messages) -> str:
        """The text the model continues."""
        return render(self.model.tokenizer, messages, EXPLAIN_PREFIX)

    def __call__(self, messages: Messages) -> str:
        out = self.model.generate(self.prompt(messages), max_new_tokens=self.max_new_tokens)
        return clean_explanation(str(out))


def answer_ids(model: HookedModel, words: tuple[str, ...]) -> list[int]:
    """The ids of ``words`` that are single tokens.

    >>> len(answer_ids(model, ("Yes", " Yes"))) >= 1
    True
    """
    ids = []
    for w in words:
        got = model.tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(got) == 1 and got[0] not in ids:
            ids.append(got[0])
    if not ids:
        raise UncoverError(f"none of {list(words)} is a single token of this model's tokenizer")
    return ids


class LMScorer:
    """Answers Yes/No prompts by the logits of the first answer token.

    >>> from uncover.autointerp.prompts import detection_messages
    >>> from uncover.autointerp.examples import Context
    >>> LMScorer(model)([detection_messages("cats", Context(["a cat"], [1.0], [True]))]).shape
    torch.Size([1])
    """

    def __init__(self, model: HookedModel, batch_size: int = 8):
        _need_tokenizer(model, "scorer")
        self.model, self.batch_size = model, batch_size
        self.yes = answer_ids(model, ("Yes", " Yes"))
        self.no = answer_ids(model, ("No", " No"))

    @torch.no_grad()
    def __call__(self, prompts: list[Messages]) -> torch.Tensor:
        texts = [render(self.model.tokenizer, m) for m in prompts]
        out = []
        for i in range(0, len(texts), self.batch_size):
            b = self.model.tokenize(texts[i : i + self.batch_size])  # right-padded: read each row's last token
            logits = self.model(b).float()
            last = logits[torch.arange(len(logits)), b.attention_mask.sum(1) - 1]
            out.append(last[:, self.yes].logsumexp(-1) - last[:, self.no].logsumexp(-1))
        return torch.cat(out).cpu() if out else torch.zeros(0)
