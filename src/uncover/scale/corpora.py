"""Corpora streamed from disk: text, JSONL, Parquet and Hugging Face ``datasets`` saved on disk.

A :class:`Corpus` names where the text is (a file, a ``datasets.save_to_disk`` folder, or ``None``
for the embedded corpus of :mod:`uncover.data.corpus`) and which field holds it; :meth:`Corpus.texts`
streams its documents one at a time (a JSONL or text file line by line, a Parquet file by record
batches, a saved dataset through its memory-mapped Arrow files), so a corpus never has to fit in
memory. :meth:`Corpus.fingerprint` hashes the bytes the documents come from: a manifest records it,
and a resumed job refuses a corpus that changed. :func:`token_blocks` cuts the stream into the
fixed-length token blocks that harvesting shards are made of.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uncover.core.errors import UsageError
from uncover.hooks.tokens import special_prefix

KINDS = ("embedded", "text", "jsonl", "parquet", "dataset")
SUFFIXES = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class Corpus:
    """Where a corpus's documents are.

    Attributes:
        source: a ``.txt``/``.md`` file (one document per paragraph), a ``.jsonl`` file (one JSON object per
            line), a ``.parquet`` file, a folder written by ``datasets.Dataset.save_to_disk``, or ``None``
            (the embedded corpus: Python's documentation topics).
        field: the JSON field, Parquet column or dataset column that holds the text.
        split: the split of a saved ``DatasetDict`` (default: its only split, or ``train``).

    >>> c = Corpus.open(None)
    >>> c.kind, next(iter(c.texts()))[:22]
    ('embedded', 'The "assert" statement')
    """

    source: Path | None
    field: str = "text"
    split: str | None = None

    @classmethod
    def open(cls, source: str | Path | None, field: str = "text", split: str | None = None) -> Corpus:
        """Check that ``source`` exists and has a known format; nothing is read yet but a dataset's column names.

        >>> Corpus.open("notes.docx")
        Traceback (most recent call last):
        ...
        uncover.core.errors.UsageError: corpus notes.docx: unknown format '.docx'; valid: a .txt, .text, .md, \
.jsonl or .parquet file, a folder saved by datasets' save_to_disk, or none for the embedded corpus
        """
        if source is None:
            return cls(None, field, split)
        path = Path(source).expanduser()
        if path.is_dir():
            corpus = cls(path, field, split)
            corpus._dataset()  # refuses folders that are no saved dataset, unknown splits and columns now
            return corpus
        if path.suffix.lower() not in SUFFIXES:
            raise UsageError(
                f"corpus {path}: unknown format {path.suffix!r}; valid: a "
                f"{', '.join(list(SUFFIXES)[:-1])} or {list(SUFFIXES)[-1]} file, a folder saved by "
                "datasets' save_to_disk, or none for the embedded corpus"
            )
        if not path.is_file():
            raise UsageError(f"corpus {path}: no such file")
        return cls(path, field, split)

    @property
    def kind(self) -> str:
        """``embedded``, ``text``, ``jsonl``, ``parquet`` or ``dataset``."""
        if self.source is None:
            return "embedded"
        return "dataset" if self.source.is_dir() else SUFFIXES[self.source.suffix.lower()]

    def describe(self) -> dict[str, Any]:
        """What a manifest records: source, kind, field, split and fingerprint."""
        return {
            "source": None if self.source is None else str(self.source),
            "kind": self.kind,
            "field": self.field,
            "split": self.split,
            "fingerprint": self.fingerprint(),
        }

    # ---- reading ------------------------------------------------------------------------------------
    def texts(self) -> Iterator[str]:
        """The documents, streamed in order (empty ones skipped)."""
        reader = {
            "embedded": self._embedded,
            "text": self._text,
            "jsonl": self._jsonl,
            "parquet": self._parquet,
            "dataset": self._saved,
        }[self.kind]
        for doc in reader():
            if not isinstance(doc, str):
                raise UsageError(f"corpus {self.source}: field {self.field!r} holds {type(doc).__name__}, not text")
            if "\x00" in doc:
                raise UsageError(f"corpus {self.source} holds NUL bytes: a binary file, not text")
            if doc.strip():
                yield doc

    def _embedded(self) -> Iterator[str]:
        from uncover.data.corpus import corpus_texts

        yield from corpus_texts()

    def _lines(self) -> Iterator[tuple[int, str]]:
        try:
            with self.source.open(encoding="utf-8") as f:  # type: ignore[union-attr]
                yield from enumerate(f, 1)
        except UnicodeDecodeError as e:
            raise UsageError(
                f"corpus {self.source} is not UTF-8 text (byte {e.start}: {e.reason}); is it a binary file?"
            ) from None

    def _text(self) -> Iterator[str]:
        para: list[str] = []
        for _, line in self._lines():
            if line.strip():
                para.append(line.rstrip("\n"))
            elif para:
                yield "\n".join(para).strip()
                para = []
        if para:
            yield "\n".join(para).strip()

    def _jsonl(self) -> Iterator[str]:
        for i, line in self._lines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(
                    f"corpus {self.source}, line {i}: not valid JSON ({e.msg}); each line must be one JSON object"
                ) from None
            if not isinstance(row, dict) or self.field not in row:
                keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
                raise UsageError(
                    f"corpus {self.source}, line {i}: no field {self.field!r} (found: {keys}); choose one with --field"
                )
            yield row[self.field]

    def _parquet(self) -> Iterator[str]:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError("reading Parquet needs pyarrow: pip install uncover[corpora]") from None

        try:
            f = pq.ParquetFile(self.source)
        except (pa.ArrowException, OSError) as e:
            raise UsageError(f"corpus {self.source}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        names = f.schema_arrow.names
        if self.field not in names:
            raise UsageError(
                f"corpus {self.source}: no column {self.field!r}; valid: {', '.join(names)} (choose one with --field)"
            )
        try:
            for batch in f.iter_batches(columns=[self.field], batch_size=1024):
                yield from batch.column(0).to_pylist()
        except pa.ArrowException as e:
            raise UsageError(f"corpus {self.source}: broken Parquet data ({str(e).splitlines()[0]})") from None

    def _dataset(self) -> Any:
        try:
            import datasets
        except ImportError:
            raise UsageError(
                "reading a saved dataset needs the datasets package: pip install uncover[corpora]"
            ) from None
        try:
            ds = datasets.load_from_disk(str(self.source))
        except FileNotFoundError as e:
            raise UsageError(f"corpus {self.source}: not a folder saved by datasets' save_to_disk ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            splits = list(ds)
            split = self.split or (splits[0] if len(splits) == 1 else "train")
            if split not in ds:
                raise UsageError(f"corpus {self.source}: no split {split!r}; valid: {', '.join(splits)}")
            ds = ds[split]
        elif self.split is not None:
            raise UsageError(f"corpus {self.source}: a single dataset has no splits; drop the split {self.split!r}")
        if self.field not in ds.column_names:
            raise UsageError(
                f"corpus {self.source}: no column {self.field!r}; valid: {', '.join(ds.column_names)} "
                "(choose one with --field)"
            )
        return ds

    def _saved(self) -> Iterator[str]:
        ds = self._dataset()
        for batch in ds.select_columns([self.field]).iter(batch_size=1024):
            yield from batch[self.field]

    # ---- identity ---------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A 16-hex-digit hash of the bytes the documents come from, the kind and the field.

        >>> Corpus.open(None).fingerprint() == Corpus.open(None).fingerprint()
        True
        """
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{self.kind}|{self.field}|{self.split}|".encode())
        if self.source is None:
            for doc in self.texts():
                h.update(doc.encode("utf-8"))
                h.update(b"\x00")
            return h.hexdigest()
        files = sorted(p for p in self.source.rglob("*") if p.is_file()) if self.source.is_dir() else [self.source]
        for p in files:
            if self.source.is_dir():
                h.update(str(p.relative_to(self.source)).encode() + b"\x00")
            with p.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        return h.hexdigest()


def _tokenizer(model: Any) -> Any:
    tok = getattr(model, "tokenizer", model)
    if tok is None:
        raise UsageError("this model has no tokenizer, so it cannot read a text corpus; load one with a tokenizer")
    return tok


def token_blocks(
    model: Any, corpus: Corpus, block_len: int, max_blocks: int | None = None, docs_per_call: int = 64
) -> Iterator[torch.Tensor]:
    """Consecutive token blocks ``[block_len]`` (int64) of the whole corpus, streamed.

    Documents are tokenised without special tokens (``docs_per_call`` at a time), each followed by the
    end-of-sequence token, joined, and cut into blocks, each led by the tokenizer's BOS when it adds one;
    a block may span documents; the incomplete tail is dropped. Stops after ``max_blocks``.
    ``model``: a ``HookedModel`` or a tokenizer.

    >>> blocks = list(token_blocks(model, Corpus.open(None), 16, max_blocks=3))
    >>> len(blocks), blocks[0].shape, blocks[0].dtype
    (3, torch.Size([16]), torch.int64)
    """
    if block_len < 1:
        raise UsageError(f"block_len must be >= 1, got {block_len}")
    tok = _tokenizer(model)
    eos = getattr(tok, "eos_token_id", None)
    prefix = special_prefix(tok)  # each block starts as the tokenizer starts a text (its BOS, if any)
    body = block_len - len(prefix)
    if body < 1:
        raise UsageError(f"block_len {block_len} leaves no room after the {len(prefix)}-token BOS prefix")
    buf: list[int] = []
    made = 0
    docs: list[str] = []

    def flush() -> Iterator[torch.Tensor]:
        nonlocal buf, made
        for ids in tok(docs, add_special_tokens=False)["input_ids"]:
            buf.extend(ids)
            if eos is not None:
                buf.append(eos)
        docs.clear()
        n = len(buf) // body
        take = n if max_blocks is None else min(n, max_blocks - made)
        for i in range(take):
            yield torch.tensor(prefix + buf[i * body : (i + 1) * body], dtype=torch.long)
        made += take
        buf = buf[n * body :]

    if max_blocks is not None and max_blocks <= 0:
        return
    for doc in corpus.texts():
        docs.append(doc)
        if len(docs) >= docs_per_call:
            yield from flush()
            if max_blocks is not None and made >= max_blocks:
                return
    if docs:
        yield from flush()
