"""Task datasets: clean/corrupt prompt pairs with answer and wrong tokens.

Each generator returns a :class:`Task`. Clean and corrupt prompts of a pair have the
same number of tokens (checked by :meth:`Task.check` for a given tokenizer), so
activations can be patched position by position.

- :func:`ioi` (Wang et al. 2023): "When Mary and John went to the store, John gave a
  drink to" → " Mary"; corrupted by replacing the second subject mention with the
  indirect object, which flips the answer. ABBA and BABA orders.
- :func:`facts`: subject/relation/object facts; corrupted by another subject of the same
  length; the subject span is recorded for causal tracing. :meth:`Task.filter_correct`
  keeps the facts a model actually gets right.
- :func:`greater_than` (Hanna et al. 2023), adapted to digit-level tokenizers: "The war
  lasted from the year 17YY to the year 17" → the next digit should be ≥ Y's first digit.
- :func:`repeated_tokens`: random token sequences repeated twice (induction).
- :func:`from_jsonl`: users' own pairs.

:func:`right_pairs` keeps the pairs of a named task that a model gets right (with equal token
counts), and :func:`task_pair` picks the one pair a patching command studies: the first such
pair of a task, or the user's explicit clean/corrupt/answer/wrong.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError, UsageError

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

NAMES = ("Mary John Alice Bob Tom James Sarah Emma David Michael Anna Kate Paul Mark Lisa Peter Laura Jack Rose "
         "Sam Dan Ben Amy Max Eric Adam Kevin Jane Lucy Mike Alex Chris Steve Tim Ryan Jason Joe Nick").split()

IOI_TEMPLATES = (
    "When {A} and {B} went to the store, {S} gave a drink to",
    "When {A} and {B} went to the park, {S} gave a ball to",
    "After {A} and {B} went to the office, {S} gave a letter to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "While {A} and {B} were working at the school, {S} gave a book to",
    "Friends {A} and {B} found a necklace at the beach. {S} gave it to",
    "When {A} and {B} arrived at the hospital, {S} handed a flower to",
)

FACTS = (
    ("The Eiffel Tower", "{} is in the city of", " Paris"),
    ("The Colosseum", "{} is in the city of", " Rome"),
    ("The Statue of Liberty", "{} is in the city of", " New"),
    ("Big Ben", "{} is in the city of", " London"),
    ("The Brandenburg Gate", "{} is in the city of", " Berlin"),
    ("The Kremlin", "{} is in the city of", " Moscow"),
    ("The Sagrada Familia", "{} is in the city of", " Barcelona"),
    ("France", "The capital of {} is", " Paris"),
    ("Japan", "The capital of {} is", " Tokyo"),
    ("Italy", "The capital of {} is", " Rome"),
    ("Germany", "The capital of {} is", " Berlin"),
    ("Spain", "The capital of {} is", " Madrid"),
    ("Russia", "The capital of {} is", " Moscow"),
    ("Egypt", "The capital of {} is", " Cairo"),
    ("China", "The capital of {} is", " Beijing"),
    ("Barack Obama", "{} was born in the country of", " the"),
    ("The Great Wall", "{} is located in the country of", " China"),
    ("The Taj Mahal", "{} is located in the country of", " India"),
    ("Mount Fuji", "{} is located in the country of", " Japan"),
    ("The Pyramids of Giza", "{} are located in the country of", " Egypt"),
    ("William Shakespeare", "{} wrote in the language of", " English"),
    ("Albert Einstein", "{} was a famous", " physicist"),
    ("The Amazon River", "{} flows through the continent of", " South"),
    ("Toyota", "{} is a car company from the country of", " Japan"),
    ("BMW", "{} is a car company from the country of", " Germany"),
    ("Ferrari", "{} is a car company from the country of", " Italy"),
)


@dataclass(frozen=True)
class PromptPair:
    """One clean/corrupt pair.

    Attributes:
        clean: the prompt whose behaviour is studied.
        corrupt: the same prompt with the key information changed (same token count).
        answer: the clean prompt's correct next token (one token, usually with a leading space).
        wrong: the competing token (often the corrupt prompt's answer).
        meta: extra facts (template, names, subject span ...).
    """

    clean: str
    corrupt: str
    answer: str
    wrong: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Task:
    """A named list of prompt pairs with helpers to check and filter them."""

    name: str
    pairs: list[PromptPair]

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def clean(self) -> list[str]:
        return [p.clean for p in self.pairs]

    @property
    def corrupt(self) -> list[str]:
        return [p.corrupt for p in self.pairs]

    @property
    def answers(self) -> list[str]:
        return [p.answer for p in self.pairs]

    @property
    def wrongs(self) -> list[str]:
        return [p.wrong for p in self.pairs]

    def check(self, model: HookedModel) -> Task:
        """Raise ``UncoverError`` unless every pair has equal token lengths and one-token answers."""
        for i, p in enumerate(self.pairs):
            n_clean, n_corrupt = len(model.to_tokens(p.clean)[0]), len(model.to_tokens(p.corrupt)[0])
            if n_clean != n_corrupt:
                raise UncoverError(
                    f"{self.name} pair {i}: clean has {n_clean} tokens but corrupt has {n_corrupt}; "
                    "patching needs equal lengths"
                )
            if model.to_single_token(p.answer) == model.to_single_token(p.wrong):
                raise UncoverError(f"{self.name} pair {i}: answer and wrong are the same token {p.answer!r}; "
                                   "the metric compares two different tokens")
        return self

    def filter_correct(self, model: HookedModel, margin: float = 0.0) -> Task:
        """Keep pairs whose clean prompt prefers ``answer`` over ``wrong`` by more than ``margin`` logits."""
        if not self.pairs:
            return self
        logits = model(self.clean)
        b = model.tokenize(self.clean)
        last = b.columns(-1)[:, 0]
        keep = []
        for i, p in enumerate(self.pairs):
            row = logits[i, last[i]]
            if row[model.to_single_token(p.answer)] - row[model.to_single_token(p.wrong)] > margin:
                keep.append(p)
        return Task(self.name, keep)

    def to_jsonl(self, path: str | Path) -> None:
        """Write one JSON object per pair (readable by :func:`from_jsonl`)."""
        with open(path, "w", encoding="utf-8") as f:
            for p in self.pairs:
                f.write(json.dumps({"clean": p.clean, "corrupt": p.corrupt, "answer": p.answer,
                                    "wrong": p.wrong, **({"meta": p.meta} if p.meta else {})}) + "\n")


def ioi(
    n: int = 16,
    *,
    order: str = "both",
    corrupt: str = "swap",
    seed: int = 0,
    names: tuple[str, ...] | list[str] = NAMES,
) -> Task:
    """Indirect-object-identification pairs.

    ``order``: ``ABBA`` (IO first), ``BABA`` (subject first) or ``both`` (alternating).
    ``corrupt``: ``swap`` (the second subject mention becomes the indirect object, which flips
    the answer) or ``abc`` (all three names replaced by three other names, Wang et al.'s ABC
    distribution for path patching: no name in the corrupt prompt points to the answer).

    >>> t = ioi(2, seed=1)
    >>> len(t), t.pairs[0].answer != t.pairs[0].wrong
    (2, True)
    """
    if order not in ("ABBA", "BABA", "both"):
        raise UncoverError(f"unknown IOI order {order!r}; valid: ABBA, BABA, both")
    if corrupt not in ("swap", "abc"):
        raise UncoverError(f"unknown IOI corruption {corrupt!r}; valid: swap, abc")
    rng = random.Random(seed)
    other = random.Random(seed + 1_000_003)  # ABC names: a stream of their own keeps the clean prompts
    pairs = []
    for i in range(n):
        io, s = rng.sample(list(names), 2)
        tmpl = IOI_TEMPLATES[i % len(IOI_TEMPLATES)]
        kind = order if order != "both" else ("ABBA" if i % 2 == 0 else "BABA")
        a, b = (io, s) if kind == "ABBA" else (s, io)
        clean = tmpl.format(A=a, B=b, S=s)
        if corrupt == "swap":
            bad = tmpl.format(A=a, B=b, S=io)
        else:
            x, y, z = other.sample([nm for nm in names if nm not in (io, s)], 3)
            bad = tmpl.format(A=x, B=y, S=z)
        pairs.append(PromptPair(clean, bad, " " + io, " " + s, {"template": tmpl, "order": kind,
                                                                     "io": io, "s": s}))
    return Task("ioi", pairs)


def facts(*, seed: int = 0) -> Task:
    """Factual-recall pairs; the corrupt prompt swaps in another subject of the same template.

    ``meta["subject"]`` is the subject string; use :func:`subject_positions` to find its tokens.
    Token lengths of clean and corrupt may differ: :meth:`Task.check` on a model says which
    pairs fit; :func:`facts_for` builds equal-length pairs for a given model.

    >>> facts().pairs[0].clean
    'The Eiffel Tower is in the city of'
    """
    rng = random.Random(seed)
    pairs = []
    for subj, tmpl, obj in FACTS:
        others = [f for f in FACTS if f[1] == tmpl and f[0] != subj and f[2] != obj]
        other = rng.choice(others) if others else None
        corrupt = tmpl.format(other[0]) if other else tmpl.format(subj)
        wrong = other[2] if other else obj
        pairs.append(PromptPair(tmpl.format(subj), corrupt, obj, wrong, {"subject": subj, "template": tmpl}))
    return Task("facts", pairs)


def facts_for(model: HookedModel, *, margin: float = 0.0) -> Task:
    """Facts the model gets right (answer beats the corrupt subject's answer), with equal-length pairs."""
    pairs = []
    for p in facts().pairs:
        same = [q for q in facts().pairs if q.meta["template"] == p.meta["template"] and q.answer != p.answer]
        n = len(model.to_tokens(p.clean)[0])
        match = [q for q in same if len(model.to_tokens(q.clean)[0]) == n]
        if not match:
            continue
        q = match[0]
        pairs.append(PromptPair(p.clean, q.clean, p.answer, q.answer, p.meta))
    return Task("facts", pairs).filter_correct(model, margin)


def subject_positions(model: HookedModel, prompt: str, subject: str) -> list[int]:
    """Token positions of ``subject`` inside ``prompt``; ``UncoverError`` if it is not there."""
    start = prompt.find(subject)
    if start < 0:
        raise UncoverError(f"subject {subject!r} not found in prompt {prompt!r}")
    enc = model.tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
    end = start + len(subject)
    pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > start and a < end and b > a]
    if not pos:
        raise UncoverError(f"subject {subject!r} has no tokens in {prompt!r}")
    return pos


def greater_than(n: int = 16, *, seed: int = 0) -> Task:
    """Greater-than pairs for digit-level tokenizers.

    Clean: "The war lasted from the year 17YY to the year 17"; corrupt uses year 1701 (the
    "01" baseline of Hanna et al.). ``answer`` is the first digit of YY and ``wrong`` the digit
    below it; ``meta["yy"]`` holds YY for a probability-mass metric.

    >>> greater_than(1, seed=3).pairs[0].clean.startswith("The war lasted from the year 17")
    True
    """
    rng = random.Random(seed)
    nouns = ("war", "expedition", "drought", "siege", "famine", "reign", "dispute", "voyage")
    pairs = []
    for i in range(n):
        yy = rng.randint(21, 98)
        noun = nouns[i % len(nouns)]
        clean = f"The {noun} lasted from the year 17{yy:02d} to the year 17"
        corrupt = f"The {noun} lasted from the year 1701 to the year 17"
        d = yy // 10
        pairs.append(PromptPair(clean, corrupt, str(d), str(d - 1), {"yy": yy}))
    return Task("greater_than", pairs)


def repeated_tokens(model: HookedModel, n: int = 8, seq_len: int = 20, *, seed: int = 0) -> torch.Tensor:
    """``[n, 1 + 2 * seq_len]`` token ids: an optional BOS, then random tokens repeated twice."""
    g = torch.Generator().manual_seed(seed)
    lo = min(1000, model.cfg.d_vocab // 4)
    body = torch.randint(lo, model.cfg.d_vocab, (n, seq_len), generator=g)
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    first = torch.full((n, 1), bos if bos is not None else body[0, 0].item(), dtype=torch.long)
    return torch.cat([first, body, body], dim=1)


def from_jsonl(path: str | Path) -> Task:
    """Pairs from a JSONL file with ``clean``, ``corrupt``, ``answer``, ``wrong`` (and optional ``meta``)."""
    from uncover.core.userfiles import parse_json, read_text, require_fields

    pairs = []
    fields = ("clean", "corrupt", "answer", "wrong")
    for lineno, line in enumerate(read_text(path, "pairs file").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        d = require_fields(parse_json(line, where), fields, where)
        bad = [k for k in fields if not isinstance(d[k], str) or not d[k].strip()]
        if bad:
            raise UsageError(f"{where}: {', '.join(bad)} must be non-empty text, got "
                               f"{', '.join(repr(d[k])[:40] for k in bad)}")
        pairs.append(PromptPair(d["clean"], d["corrupt"], d["answer"], d["wrong"], d.get("meta") or {}))
    return Task(Path(path).stem, pairs)


TASKS = {"ioi": ioi, "facts": facts, "greater_than": greater_than}
"""Task generators by name (for the CLI's ``--task``)."""


def right_pairs(model: HookedModel, task: str, *, n: int = 16, ioi_corrupt: str = "swap") -> Task:
    """The pairs of the task called ``task`` that ``model`` gets right, clean and corrupt of equal token counts.

    ``n`` pairs are generated first (``facts``: every fact, via :func:`facts_for`); ``ioi_corrupt`` is
    :func:`ioi`'s corruption (``swap`` or ``abc``). Raises ``UncoverError`` for an unknown task and when
    the model gets no pair right.

    >>> t = right_pairs(model, "ioi", n=4)
    >>> len(t) > 0 and t.name
    'ioi'
    """
    if task not in TASKS:
        raise UncoverError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if task == "facts":
        t = facts_for(model)
    elif task == "ioi":
        t = ioi(n, corrupt=ioi_corrupt).filter_correct(model)
    else:
        t = TASKS[task](n).filter_correct(model)
    same = [p for p in t.pairs if len(model.to_tokens(p.clean)[0]) == len(model.to_tokens(p.corrupt)[0])]
    if not same:
        raise UncoverError(f"the model gets no {task} pair right")
    return Task(t.name, same)


def task_pair(model: HookedModel | None, task: str | None, clean: str | None = None, corrupt: str | None = None,
              answer: str | None = None, wrong: str | None = None) -> tuple[str, str, str, str]:
    """``(clean, corrupt, answer, wrong)``: the first pair of ``task`` the model gets right, or the explicit pair.

    Without a task all four parts are required (the error names the missing ones); no model is
    needed then.

    >>> task_pair(None, None, "a b", "a c", " x", " y")
    ('a b', 'a c', ' x', ' y')
    >>> task_pair(model, "facts")
    ('The Eiffel Tower is in the city of', 'The Colosseum is in the city of', ' Paris', ' Rome')
    """
    if task is not None:
        p = right_pairs(model, task).pairs[0]
        return p.clean, p.corrupt, p.answer, p.wrong
    parts = (("--clean", clean), ("--corrupt", corrupt), ("--answer", answer), ("--wrong", wrong))
    missing = [name for name, v in parts if v is None]
    if missing:
        raise UncoverError(f"missing {', '.join(missing)} (or give --task)")
    return clean, corrupt, answer, wrong  # type: ignore[return-value]
