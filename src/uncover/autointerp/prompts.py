"""The prompts of auto-interpretability, built exactly as documented here (and in ``docs/autointerp.md``).

Marked tokens are wrapped in ``<<`` and ``>>``; consecutive marked tokens share one pair
(delphi's convention). Each prompt is a list of chat messages (``system``, ``user``, ...), rendered with
the model's chat template when it has one, plus the start of the assistant's answer:

- explaining (:func:`explainer_messages`): the numbered top-activating contexts, marked; the answer
  starts with :data:`EXPLAIN_PREFIX` (an open quote after "words like", which asks a small model for
  examples of the tokens rather than free prose) and the explainer continues it;
- detection (:func:`detection_messages`): the explanation and one unmarked context; the scorer answers
  ``Yes`` (the feature fires somewhere in it) or ``No``;
- fuzzing (:func:`fuzzing_messages`): the explanation and one context with some tokens marked; ``Yes``
  when the marked tokens are the ones the explanation describes.

The scorer's answer is read from the logits of its first answer token (``Yes`` against ``No``), not from
free generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uncover.autointerp.examples import Context

Messages = list[dict[str, str]]

EXPLAIN_SYSTEM = ("You are studying a neural network. Each example below is a short text in which the tokens "
                  "where one feature of the network fires are marked <<like this>>. Say in a few words what the "
                  "marked tokens have in common.")
EXPLAIN_PREFIX = 'The marked tokens are words like "'
DETECTION_SYSTEM = ("You check descriptions of features of a neural network. Given a description and a text, "
                    "answer Yes if the feature described fires somewhere in the text, and No otherwise.")
QUESTION = "\n\nWhat do the marked tokens have in common?"
FUZZING_SYSTEM = ("You check descriptions of features of a neural network. Given a description and a text in "
                  "which some tokens are marked <<like this>>, answer Yes if the marked tokens are the ones the "
                  "description is about, and No otherwise.")


def marked_text(tokens: Sequence[str], marked: Sequence[bool]) -> str:
    """The tokens joined, with each run of marked tokens wrapped in ``<<`` ``>>``.

    >>> marked_text(["The", " big", " cat", " sat"], [False, True, True, False])
    'The<< big cat>> sat'
    """
    out = []
    for i, (t, m) in enumerate(zip(tokens, marked)):
        if m and (i == 0 or not marked[i - 1]):
            out.append("<<")
        out.append(t)
        if m and (i + 1 == len(tokens) or not marked[i + 1]):
            out.append(">>")
    return "".join(out)


def explainer_messages(contexts: Sequence[Context]) -> Messages:
    """The explainer's prompt: the contexts numbered, one per line, marked.

    >>> from uncover.autointerp.examples import Context
    >>> m = explainer_messages([Context(["a", " b"], [0.0, 1.0], [False, True])])
    >>> [x["role"] for x in m]
    ['system', 'user']
    >>> print(m[-1]["content"])
    Examples:
    1. a<< b>>
    <BLANKLINE>
    What do the marked tokens have in common?
    """
    lines = [f"{i + 1}. {marked_text(c.tokens, c.marked)}".replace("\n", " ") for i, c in enumerate(contexts)]
    return [{"role": "system", "content": EXPLAIN_SYSTEM},
            {"role": "user", "content": "Examples:\n" + "\n".join(lines) + QUESTION}]


def detection_messages(explanation: str, context: Context) -> Messages:
    """The detection prompt for one unmarked context.

    >>> from uncover.autointerp.examples import Context
    >>> print(detection_messages("words about cats", Context(["a", " cat"], [0.0, 1.0], [False, True]))[1]["content"])
    Description: words about cats
    Text: a cat
    Does the feature fire on this text?
    """
    user = f"Description: {explanation}\nText: {context.text}"
    return [{"role": "system", "content": DETECTION_SYSTEM},
            {"role": "user", "content": _one_line(user) + "\nDoes the feature fire on this text?"}]


def fuzzing_messages(explanation: str, context: Context) -> Messages:
    """The fuzzing prompt for one context, marked as ``context.marked`` says.

    >>> from uncover.autointerp.examples import Context
    >>> print(fuzzing_messages("words about cats", Context(["a", " cat"], [0.0, 1.0], [False, True]))[1]["content"])
    Description: words about cats
    Text: a<< cat>>
    Are the marked tokens the ones the description is about?
    """
    user = f"Description: {explanation}\nText: {marked_text(context.tokens, context.marked)}"
    return [{"role": "system", "content": FUZZING_SYSTEM},
            {"role": "user", "content": _one_line(user) + "\nAre the marked tokens the ones the description is about?"}]


def _one_line(text: str) -> str:
    """Keep the ``Description:`` and ``Text:`` lines; newlines inside the text become spaces."""
    head, _, body = text.partition("\nText: ")
    return head.replace("\n", " ") + "\nText: " + body.replace("\n", " ")


def render(tokenizer: Any, messages: Messages, answer_prefix: str = "") -> str:
    """The prompt as text: the chat template with the assistant's turn opened, then ``answer_prefix``.

    Without a tokenizer or a chat template: the messages' contents, one paragraph each, then ``Answer:``.

    >>> render(None, [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], "It is")
    'S\\n\\nQ\\n\\nAnswer: It is'
    """
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:" + (" " if answer_prefix else "")
    return text + answer_prefix
