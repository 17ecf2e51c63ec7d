"""Labelled text sets and contrast pairs for probing, CCS and representation engineering.

Owns two containers, :class:`Labelled` (texts with integer labels, and optional *groups*
used by control tasks, Hewitt & Liang 2019) and :class:`ContrastPairs` (a positive and a
negative text per item, Burns et al. 2022; Zou et al. 2023), the built-in sets the
project generates, and loaders for users' files:

- :func:`truth_statements`: true and false factual statements built from
  :data:`uncover.data.tasks.FACTS` plus a list of capitals, optionally kept to the facts a
  model knows (its next-token prediction prefers the true object over the false one);
- :func:`truth_pairs`: the true and false completion of each fact as a contrast pair (CCS);
- :func:`sentiment_pairs`, :func:`sentiment_texts`: positive/negative sentence pairs;
- :func:`honesty_pairs`: honest/dishonest instructions before the same statement (RepE);
- :func:`from_file` (CSV or JSONL ``text,label``) and :func:`pairs_from_file`
  (``positive,negative[,label]``);
- the registry of names the CLI and operations take (:func:`load_labelled`,
  :func:`load_pairs`, :func:`check_dataset`): a built-in name or a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from uncover.core.errors import UncoverError, UsageError
from uncover.data.containers import ContrastPairs, Labelled
from uncover.data.tasks import FACTS

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

CAPITALS = (
    ("France", " Paris"), ("Japan", " Tokyo"), ("Italy", " Rome"), ("Germany", " Berlin"), ("Spain", " Madrid"),
    ("Russia", " Moscow"), ("Egypt", " Cairo"), ("China", " Beijing"), ("England", " London"),
    ("Greece", " Athens"), ("Austria", " Vienna"), ("Portugal", " Lisbon"), ("Ireland", " Dublin"),
    ("Norway", " Oslo"), ("Sweden", " Stockholm"), ("Poland", " Warsaw"), ("Hungary", " Budapest"),
    ("Thailand", " Bangkok"), ("Kenya", " Nairobi"), ("Peru", " Lima"), ("Cuba", " Havana"),
    ("Finland", " Helsinki"), ("Denmark", " Copenhagen"), ("Belgium", " Brussels"), ("Turkey", " Ankara"),
    ("Iran", " Tehran"), ("Iraq", " Baghdad"), ("Canada", " Ottawa"), ("Australia", " Canberra"),
    ("Argentina", " Buenos Aires"), ("Mexico", " Mexico City"), ("India", " New Delhi"), ("South Korea", " Seoul"),
    ("Indonesia", " Jakarta"), ("the Philippines", " Manila"), ("Vietnam", " Hanoi"), ("Chile", " Santiago"),
    ("Colombia", " Bogota"), ("Ukraine", " Kyiv"), ("Romania", " Bucharest"), ("the Czech Republic", " Prague"),
    ("Switzerland", " Bern"), ("the Netherlands", " Amsterdam"), ("Scotland", " Edinburgh"),
)
"""Country and capital, for true/false statements."""

SENTIMENT_SUBJECTS = (
    "The movie", "The food at this restaurant", "The hotel room", "The concert last night", "My new phone",
    "The book I just finished", "The service at the store", "Our holiday in the mountains", "The weather today",
    "The new album", "The customer support", "This coffee", "The game last weekend", "The trip to the city",
    "The show on television", "Her performance on stage", "The design of the car", "The lecture this morning",
    "The party on Saturday", "The museum exhibition",
)
SENTIMENT_WORDS = (
    ("wonderful", "terrible"), ("amazing", "awful"), ("excellent", "horrible"), ("fantastic", "dreadful"),
    ("delightful", "disgusting"), ("great", "bad"), ("lovely", "miserable"), ("brilliant", "pathetic"),
)
"""(positive, negative) adjectives; one pair per sentence."""

HONESTY_PERSONAS = (
    ("an honest", "a dishonest"), ("a truthful", "a lying"), ("a sincere", "a deceitful"),
)


def _fact_triples() -> list[tuple[str, str, str]]:
    """(subject, template, true object) from the task facts plus the capitals list."""
    out = [(s, t, o) for s, t, o in FACTS if o not in (" the", " New", " South")]
    seen = {t.format(s) for s, t, _ in out}
    for country, city in CAPITALS:
        s = f"The capital of {country}"
        if f"{s} is" not in seen:
            out.append((s, "{} is", city))
    return out


def _statements(model: HookedModel | None, seed: int) -> list[tuple[str, str, str, str]]:
    """(prompt, true object, false object, subject) per fact; kept to known facts if ``model``."""
    rng = random.Random(seed)
    triples = _fact_triples()
    rows = []
    for s, t, o in triples:
        others = sorted({o2 for _, t2, o2 in triples if t2 == t and o2 != o})
        if not others:
            continue
        rows.append((t.format(s), o, rng.choice(others), s))
    if model is None:
        return rows
    logits = model([r[0] for r in rows])
    last = model.tokenize([r[0] for r in rows]).columns(-1)[:, 0]
    keep = []
    for i, (prompt, o, f, s) in enumerate(rows):
        tok = model.tokenizer
        ti, fi = tok(o, add_special_tokens=False)["input_ids"][0], tok(f, add_special_tokens=False)["input_ids"][0]
        if logits[i, last[i], ti] > logits[i, last[i], fi]:
            keep.append((prompt, o, f, s))
    return keep


def truth_statements(model: HookedModel | None = None, *, seed: int = 0) -> Labelled:
    """True (label 1) and false (label 0) factual statements, one of each per fact.

    The false statement swaps in the object of another fact with the same template; with a
    ``model``, only facts whose true object it prefers are kept. Groups are the subjects.

    >>> s = truth_statements()
    >>> s.texts[0], s.labels[0], s.labels[1]
    ('The Eiffel Tower is in the city of Paris.', 1, 0)
    """
    texts, labels, groups = [], [], []
    for prompt, o, f, s in _statements(model, seed):
        for obj, lab in ((o, 1), (f, 0)):
            texts.append(f"{prompt}{obj}.")
            labels.append(lab)
            groups.append(s)
    return Labelled("truth", texts, labels, groups, ("false", "true"))


def truth_pairs(model: HookedModel | None = None, *, seed: int = 0) -> ContrastPairs:
    """Each fact as a contrast pair of two candidate answers for CCS (Burns et al. 2022).

    The pair completes the same prompt with the true and with the false object, in an order
    that alternates; ``labels`` say whether the ``positive`` text is the true one (never used
    for training). The truth value thus flips between the two sides of every pair, which is
    what CCS's consistency loss looks for.

    >>> p = truth_pairs()
    >>> p.positive[0], p.negative[0], p.labels[0]
    ('The Eiffel Tower is in the city of Paris.', 'The Eiffel Tower is in the city of Moscow.', 1)
    >>> p.positive[1], p.labels[1]
    ('The Colosseum is in the city of Moscow.', 0)
    """
    s = truth_statements(model, seed=seed)
    pos, neg, labels, groups = [], [], [], []
    for k in range(0, len(s), 2):
        true, false = s.texts[k], s.texts[k + 1]
        first = (k // 2) % 2 == 0
        pos.append(true if first else false)
        neg.append(false if first else true)
        labels.append(1 if first else 0)
        groups.append((s.groups or [])[k])
    return ContrastPairs("truth-pairs", pos, neg, labels, groups)


def sentiment_pairs(n: int | None = None, *, seed: int = 0) -> ContrastPairs:
    """Positive/negative sentence pairs that differ in one adjective ("... was wonderful." / "... terrible.").

    Groups are the subjects, so that held-out splits can keep subjects apart.

    >>> p = sentiment_pairs(2)
    >>> p.positive[0], p.negative[0]
    ('The movie was lovely.', 'The movie was miserable.')
    """
    rng = random.Random(seed)
    pos, neg, groups = [], [], []
    for subj in SENTIMENT_SUBJECTS:
        verb = "was"
        for good, bad in rng.sample(SENTIMENT_WORDS, 2):
            pos.append(f"{subj} {verb} {good}.")
            neg.append(f"{subj} {verb} {bad}.")
            groups.append(subj)
    n = len(pos) if n is None else n
    return ContrastPairs("sentiment", pos[:n], neg[:n], None, groups[:n])


def sentiment_texts(n: int | None = None, *, seed: int = 0) -> Labelled:
    """The sentences of :func:`sentiment_pairs`, labelled 1 (positive) or 0 (negative).

    >>> s = sentiment_texts(2)
    >>> len(s), s.label_names
    (4, ('negative', 'positive'))
    """
    return sentiment_pairs(n, seed=seed).as_labelled()


def honesty_pairs(model: HookedModel | None = None, *, seed: int = 0) -> ContrastPairs:
    """Honest vs dishonest instructions before the same true statement (RepE, Zou et al. 2023).

    >>> p = honesty_pairs()
    >>> p.positive[0]
    'Pretend you are an honest person making statements about the world. The Eiffel Tower is in the city of Paris.'
    """
    s = truth_statements(model, seed=seed)
    tmpl = "Pretend you are {} person making statements about the world. {}"
    pos, neg, groups = [], [], []
    for k, (t, lab, g) in enumerate(zip(s.texts, s.labels, s.groups or [])):
        if lab != 1:
            continue
        good, bad = HONESTY_PERSONAS[k // 2 % len(HONESTY_PERSONAS)]
        pos.append(tmpl.format(good, t))
        neg.append(tmpl.format(bad, t))
        groups.append(g)
    return ContrastPairs("honesty", pos, neg, None, groups)


def _rows(path: str | Path) -> list[dict]:
    """The rows of a CSV or JSONL file as dicts; any unreadable or non-text file is an :class:`UncoverError`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UncoverError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise UncoverError(f"{p}: unknown format {p.suffix!r}; valid: .csv, .jsonl")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UncoverError(f"{p}: not UTF-8 text (byte {e.start}); give a CSV or JSONL text file") from None
    except OSError as e:
        raise UncoverError(f"{p}: cannot read the file ({e.strerror or e})") from None
    if "\x00" in text:
        raise UncoverError(f"{p}: holds NUL bytes: binary data, not a CSV or JSONL text file")
    if suffix == ".csv":
        try:
            return list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise UncoverError(f"{p}: not a readable CSV file ({e})") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UncoverError(f"{p}:{i}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UncoverError(f"{p}:{i}: each line must be a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _need(rows: list[dict], keys: Sequence[str], path: str | Path) -> None:
    if not rows:
        raise UncoverError(f"{path}: empty dataset (no rows)")
    for i, r in enumerate(rows, 1):
        missing = [k for k in keys if r.get(k) is None]
        if missing:
            raise UncoverError(f"{path}: row {i} lacks {', '.join(missing)}; columns needed: {', '.join(keys)}")
        empty = [k for k in keys if k != "label" and not str(r[k]).strip()]
        if empty:
            raise UncoverError(f"{path}: row {i} has an empty {empty[0]}; every text needs some words")


def from_file(path: str | Path) -> Labelled:
    """Labelled texts from a CSV (header ``text,label``) or JSONL file (``{"text", "label"}``).

    Labels may be integers ``0, 1, ...`` or names (names are numbered in sorted order); an
    optional ``group`` column gives control-task groups.

    >>> _ = (tmp / "statements.csv").write_text("text,label\\nParis is in France.,true\\nParis is in Peru.,false\\n")
    >>> from_file(tmp / "statements.csv").label_names
    ('false', 'true')
    """
    rows = _rows(path)
    _need(rows, ("text", "label"), path)
    raw = [str(r["label"]).strip() for r in rows]
    if all(x.lstrip("-").isdigit() for x in raw):
        labels = [int(x) for x in raw]
        if min(labels) < 0:
            raise UncoverError(f"{path}: row {labels.index(min(labels)) + 1}: label {min(labels)} is negative; "
                               "use 0, 1, ... or names")
        names = tuple(str(i) for i in range(max(labels) + 1))
    else:
        names = tuple(sorted(set(raw)))
        labels = [names.index(x) for x in raw]
    groups = [str(r["group"]) for r in rows] if all("group" in r for r in rows) else None
    return Labelled(Path(path).stem, [str(r["text"]) for r in rows], labels, groups, names)


def _pair_label(value: object, i: int, path: str | Path) -> int:
    text = str(value).strip().lower()
    if text in ("1", "0", "1.0", "0.0", "true", "false"):
        return int(text in ("1", "1.0", "true"))
    raise UncoverError(f"{path}: row {i}: label {value!r} is not 0 or 1 (1: the positive text is the true one)")


def pairs_from_file(path: str | Path) -> ContrastPairs:
    """Contrast pairs from CSV/JSONL with ``positive``, ``negative`` and an optional 0/1 ``label`` column.

    >>> _ = (tmp / "pairs.csv").write_text("positive,negative\\nThe movie was great.,The movie was awful.\\n")
    >>> pairs_from_file(tmp / "pairs.csv").positive[:1]
    ['The movie was great.']
    """
    rows = _rows(path)
    _need(rows, ("positive", "negative"), path)
    labels = None
    if all(r.get("label") not in (None, "") for r in rows):
        labels = [_pair_label(r["label"], i, path) for i, r in enumerate(rows, 1)]
    return ContrastPairs(Path(path).stem, [str(r["positive"]) for r in rows], [str(r["negative"]) for r in rows],
                         labels)


BUILTIN = ("truth", "sentiment", "honesty", "truth-pairs")
"""Names of the built-in sets."""

FILE_SUFFIXES = (".csv", ".jsonl", ".json")
"""File name endings read as datasets (``.json`` is read as JSON lines)."""

DATA_HELP = "truth, sentiment, honesty, truth-pairs, or a CSV/JSONL file"
"""The valid values of a dataset name, for help and error messages."""


def check_dataset(data: str, *, what: str = "dataset") -> str:
    """Refuse a dataset name that is neither built in nor an existing, readable CSV/JSONL file.

    Only the name is checked (cheap, before a model loads); the file's rows are checked
    when it is read. Raises :class:`UsageError` naming the valid choices.

    >>> check_dataset("truth")
    'truth'
    >>> check_dataset("turth")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: unknown dataset 'turth'; valid: truth, sentiment, honesty, truth-pairs, or a \
CSV/JSONL file
    """
    if data in BUILTIN:
        return data
    p = Path(data).expanduser()
    if p.suffix.lower() not in FILE_SUFFIXES:
        raise UsageError(f"unknown {what} {data!r}; valid: {DATA_HELP}")
    if not p.is_file():
        raise UsageError(f"{what} {data}: no such file" + (" (a directory)" if p.is_dir() else ""))
    if not os.access(p, os.R_OK):
        raise UsageError(f"{what} {data}: the file is not readable")
    return data


def load_labelled(data: str, model: HookedModel | None = None) -> Labelled:
    """The labelled texts called ``data``: a built-in set or a CSV/JSONL file (``text,label``).

    ``truth``: true and false statements (kept to the facts ``model`` knows); ``sentiment``:
    positive and negative sentences; ``honesty`` and ``truth-pairs``: both sides of each
    contrast pair, labelled 1 (positive) and 0 (negative).

    >>> load_labelled("sentiment").label_names
    ('negative', 'positive')
    """
    check_dataset(data)
    if data == "truth":
        return truth_statements(model)
    if data == "sentiment":
        return sentiment_texts()
    if data in ("honesty", "truth-pairs"):
        return (honesty_pairs(model) if data == "honesty" else truth_pairs(model)).as_labelled()
    return from_file(data)


def load_pairs(data: str, model: HookedModel | None = None) -> ContrastPairs:
    """The contrast pairs called ``data``: a built-in set or a CSV/JSONL file (``positive,negative[,label]``).

    ``truth`` and ``truth-pairs``: the true and the false completion of each fact (with
    labels); ``sentiment``: positive/negative sentences; ``honesty``: honest/dishonest
    instructions before the same statement.

    >>> load_pairs("sentiment").positive[0]
    'The movie was lovely.'
    """
    check_dataset(data)
    if data in ("truth", "truth-pairs"):
        return truth_pairs(model)
    if data == "sentiment":
        return sentiment_pairs()
    if data == "honesty":
        return honesty_pairs(model)
    return pairs_from_file(data)


PAIRS_WITH_LABELS = ("truth", "truth-pairs")
"""Built-in contrast sets whose pairs say which side is true (what CCS needs to report accuracy)."""
