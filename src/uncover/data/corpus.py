"""Embedded text corpus: real human-written English that is available offline.

Python ships its own reference documentation as plain text in the standard-library
module :mod:`pydoc_data.topics` (the text behind ``help("assert")``): about 80
documents and half a million characters of carefully edited English prose, with some
code. That makes a small default corpus for anything that needs "ordinary text"
(training a tuned lens, harvesting activations, measuring loss) with nothing to
download. A user's own ``.txt`` or ``.jsonl`` file can replace it.

:func:`token_blocks` turns documents into fixed-length token blocks split into train
and held-out parts *by document*, so held-out text is never seen in training.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from uncover.core.errors import UncoverError
from uncover.hooks.tokens import special_prefix

__all__ = ["CorpusError", "corpus_info", "corpus_texts", "prefix_len", "special_prefix", "split_documents",
           "token_blocks"]

SPLITS = ("train", "heldout")
FORMATS = (".txt", ".jsonl")


class CorpusError(UncoverError):
    """A corpus file that cannot be read, or a corpus too small for the blocks asked for."""


def _clean(text: str) -> str:
    """Drop heading underlines, trailing and repeated inner spaces and runs of blank lines.

    Leading indentation is kept: it is what marks code blocks in the documentation.
    """
    lines = []
    for line in text.expandtabs(4).splitlines():
        body = line.lstrip(" ")
        if re.fullmatch(r"([*=\-^~#])\1{2,}", body.rstrip()):  # "*****" under a heading
            continue
        lines.append((line[: len(line) - len(body)] + re.sub(r" {2,}", " ", body)).rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _pydoc_topics() -> list[str]:
    from pydoc_data.topics import topics

    return [t for t in (_clean(topics[k]) for k in sorted(topics)) if t]


def _read_txt(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _read_jsonl(path: Path, field: str = "text") -> list[str]:
    docs = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}, line {i}: not valid JSON ({e.msg}); each line must be one JSON object"
                                  ) from None
            if not isinstance(row, dict) or field not in row:
                keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
                raise CorpusError(f"{path}, line {i}: no {field!r} field (found: {keys}); "
                                  f'each line must look like {{"{field}": "..."}}')
            if not isinstance(row[field], str):
                raise CorpusError(f"{path}, line {i}: field {field!r} is {type(row[field]).__name__}, not a string")
            if row[field].strip():
                docs.append(row[field])
    return docs


def corpus_texts(source: str | Path | None = None) -> list[str]:
    """The documents of a corpus, as a list of strings.

    ``source``: ``None`` for the embedded corpus (Python's own documentation topics from
    :mod:`pydoc_data.topics`, cleaned of headings' underlines and excess whitespace), or
    the path of a ``.txt`` file (one document per paragraph: paragraphs are separated by
    blank lines) or of a ``.jsonl`` file (one JSON object per line with a ``text`` field).

    >>> docs = corpus_texts()
    >>> len(docs) > 50
    True
    >>> docs[0][:22]
    'The "assert" statement'
    """
    if source is None:
        return _pydoc_topics()
    path = Path(source).expanduser()
    if path.suffix.lower() not in FORMATS:
        raise CorpusError(f"{path}: unknown corpus format {path.suffix!r}; valid: {', '.join(FORMATS)} "
                          "(or None for the embedded corpus)")
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    try:
        docs = _read_txt(path) if path.suffix.lower() == ".txt" else _read_jsonl(path)
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); is it a binary file?") from None
    if any("\x00" in d for d in docs):
        raise CorpusError(f"{path} holds NUL bytes: a binary file, not text")
    if not docs:
        raise CorpusError(f"{path}: no text found")
    return docs


def corpus_info(source: str | Path | None = None) -> dict[str, Any]:
    """Size of a corpus: its source, number of documents and characters.

    >>> info = corpus_info()
    >>> info["source"], info["documents"] > 50, info["characters"] > 100_000
    ('pydoc_data.topics', True, True)
    """
    docs = corpus_texts(source)
    return {
        "source": "pydoc_data.topics" if source is None else str(source),
        "documents": len(docs),
        "characters": sum(len(d) for d in docs),
    }


def split_documents(
    texts: Sequence[str], split: str = "train", heldout_fraction: float = 0.1, seed: int = 0
) -> list[str]:
    """The documents of one split, chosen by a seeded shuffle of the documents.

    The held-out split gets ``round(heldout_fraction * n)`` documents (at least one) and the
    train split the rest, so the two never share a document. Order is kept within a split.

    >>> docs = [f"doc {i}" for i in range(10)]
    >>> held = split_documents(docs, "heldout")
    >>> len(held), set(held) & set(split_documents(docs, "train"))
    (1, set())
    """
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if not 0.0 < heldout_fraction < 1.0:
        raise CorpusError(f"heldout_fraction must be between 0 and 1 (exclusive), not {heldout_fraction}")
    n = len(texts)
    if n < 2:
        raise CorpusError(f"need at least 2 documents to split into train and heldout, got {n}")
    n_held = min(n - 1, max(1, round(heldout_fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_held])
    return [t for i, t in enumerate(texts) if (i in held) == (split == "heldout")]


def _tokenizer(obj: Any) -> Any:
    # accept a HookedModel as well as its tokenizer
    tok = obj.tokenizer if hasattr(obj, "to_str_tokens") else obj
    if tok is None:
        raise CorpusError("this model has no tokenizer; pass token blocks (a LongTensor [n_blocks, block_len])")
    return tok


def prefix_len(tokenizer: Any, tokens: torch.Tensor) -> int:
    """How many leading positions of every row of ``tokens`` ``[n, pos]`` are the tokenizer's BOS prefix.

    Statistics over positions (activation moments, SAE training) skip these: the BOS position
    is an attention sink whose activations are outliers, and it carries no text.

    >>> prefix_len(model, torch.tensor([[5, 6, 7]]))
    0
    """
    pre = special_prefix(tokenizer)
    n = len(pre)
    if n == 0 or tokens.dim() != 2 or tokens.shape[1] < n:
        return 0
    head = torch.tensor(pre, dtype=tokens.dtype, device=tokens.device)
    return n if bool((tokens[:, :n] == head).all()) else 0


def _positions(obj: Any) -> int | None:
    """How many positions a model with learned position embeddings can read (``None``: no such limit)."""
    adapter = getattr(obj, "adapter", None)
    W_pos = getattr(adapter, "W_pos", None) if adapter is not None else None
    return None if W_pos is None else int(W_pos.shape[0])


def token_blocks(
    tokenizer: Any,
    texts: Sequence[str] | None = None,
    block_len: int = 128,
    split: str = "train",
    heldout_fraction: float = 0.1,
    seed: int = 0,
    bos: bool | None = None,
) -> torch.Tensor:
    """Fixed-length token blocks ``[n_blocks, block_len]`` (int64) from one split of a corpus.

    The documents of ``split`` (see :func:`split_documents`) are tokenised without special
    tokens, joined with the tokenizer's end-of-sequence token after each document, and cut
    into consecutive blocks; the incomplete tail is dropped. A block may span two documents
    of the same split. Each block starts with the tokenizer's BOS prefix when the tokenizer
    adds one (:func:`special_prefix`; ``bos=False`` leaves it out, ``bos=True`` requires one),
    so every block looks like an input the model was trained on. ``tokenizer`` is a Hugging
    Face tokenizer (or a ``HookedModel``); ``texts`` defaults to the embedded corpus.

    >>> blocks = token_blocks(model.tokenizer, block_len=64)
    >>> blocks.shape, blocks.dtype
    (torch.Size([1400, 64]), torch.int64)
    """
    if block_len < 1:
        raise CorpusError(f"block_len must be positive, not {block_len}")
    limit = _positions(tokenizer)
    if limit is not None and block_len > limit:
        raise CorpusError(f"blocks of {block_len} tokens are longer than the model's {limit} positions; "
                          f"use a block length of at most {limit}")
    tok = _tokenizer(tokenizer)
    prefix = special_prefix(tok) if bos is not False else []
    if bos and not prefix:
        raise CorpusError("bos=True, but this tokenizer adds no BOS token; use bos=None to follow the tokenizer")
    body = block_len - len(prefix)
    if body < 1:
        raise CorpusError(f"block_len {block_len} leaves no room after the {len(prefix)}-token BOS prefix")
    docs = split_documents(corpus_texts() if texts is None else list(texts), split, heldout_fraction, seed)
    eos = getattr(tok, "eos_token_id", None)
    ids: list[int] = []
    for doc_ids in tok(list(docs), add_special_tokens=False)["input_ids"]:
        ids.extend(doc_ids)
        if eos is not None:
            ids.append(eos)
    n = len(ids) // body
    if n == 0:
        raise CorpusError(f"the {split} split has {len(ids)} tokens, fewer than one block of {block_len}; "
                          "use a smaller block_len or more text")
    out = torch.tensor(ids[: n * body], dtype=torch.long).view(n, body)
    if prefix:
        out = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(n, -1), out], dim=1)
    return out
