"""The embedded corpus, user corpus files, the document split and token blocks."""

from __future__ import annotations

import json
import re

import pytest
import torch

from uncover.core.errors import UncoverError
from uncover.data.corpus import CorpusError, corpus_info, corpus_texts, split_documents, token_blocks


class WordTokenizer:
    """A stand-in tokenizer: ``"w12 w7"`` → ``[12, 7]``; EOS is 1."""

    eos_token_id = 1

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[int(w[1:]) for w in t.split()] for t in texts]}


def test_embedded_corpus_is_clean_english():
    docs = corpus_texts()
    assert len(docs) > 50 and all(d and d == d.strip() for d in docs)
    text = "\n".join(docs)
    assert "\n\n\n" not in text and not re.search(r"^\*{3,}$", text, re.M)  # heading underlines dropped
    assert not any(line.endswith(" ") for line in text.splitlines())
    assert not re.search(r"\S  ", text) and " statement" in text  # inner runs of spaces collapsed
    assert any(line.startswith("   ") for line in text.splitlines())  # code indentation kept
    info = corpus_info()
    assert info == {"source": "pydoc_data.topics", "documents": len(docs), "characters": sum(map(len, docs))}
    assert info["characters"] > 300_000
    assert corpus_texts() == docs  # deterministic


def test_txt_paragraphs(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("First paragraph\nstill first.\n\nSecond.\n   \n\n\nThird one.\n", encoding="utf-8")
    assert corpus_texts(p) == ["First paragraph\nstill first.", "Second.", "Third one."]
    assert corpus_info(str(p)) == {"source": str(p), "documents": 3, "characters": 45}


def test_jsonl_texts_and_errors(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"text": "one", "id": 1}) + "\n\n" + json.dumps({"text": "two"}) + "\n", encoding="utf-8")
    assert corpus_texts(p) == ["one", "two"]

    p.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c\.jsonl, line 2: no 'text' field \(found: body\)"):
        corpus_texts(p)
    p.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c\.jsonl, line 2: not valid JSON"):
        corpus_texts(p)
    p.write_text('["text"]\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"line 1: no 'text' field \(found: list\)"):
        corpus_texts(p)
    p.write_text('{"text": 3}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="line 1: field 'text' is int, not a string"):
        corpus_texts(p)
    p.write_text("\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="no text found"):
        corpus_texts(p)


def test_bad_sources(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        corpus_texts(tmp_path / "missing.txt")
    with pytest.raises(CorpusError, match=r"unknown corpus format '\.csv'; valid: \.txt, \.jsonl"):
        corpus_texts(tmp_path / "data.csv")
    assert issubclass(CorpusError, UncoverError)


def test_split_is_disjoint_deterministic_and_seeded():
    docs = [f"doc {i}" for i in range(40)]
    train, held = split_documents(docs, "train"), split_documents(docs, "heldout")
    assert len(held) == 4 and len(train) == 36
    assert not set(train) & set(held) and set(train) | set(held) == set(docs)
    assert train == [d for d in docs if d in set(train)]  # order kept
    assert split_documents(docs, "heldout") == held
    assert split_documents(docs, "heldout", seed=1) != held
    assert len(split_documents(docs, "heldout", heldout_fraction=0.25)) == 10
    assert len(split_documents(docs[:3], "heldout", heldout_fraction=0.01)) == 1  # at least one
    with pytest.raises(CorpusError, match="valid: train, heldout"):
        split_documents(docs, "test")
    with pytest.raises(CorpusError, match="between 0 and 1"):
        split_documents(docs, "train", heldout_fraction=1.0)
    with pytest.raises(CorpusError, match="at least 2 documents"):
        split_documents(docs[:1], "train")


def test_token_blocks_shapes_separators_and_split_by_document():
    # document i is the token i+10 repeated i+3 times: every token names its document
    docs = [" ".join([f"w{i + 10}"] * (i + 3)) for i in range(30)]
    tok = WordTokenizer()
    train = token_blocks(tok, docs, block_len=8, split="train")
    held = token_blocks(tok, docs, block_len=8, split="heldout")
    assert train.dtype == torch.long and train.shape[1] == 8 and held.shape[1] == 8
    held_docs = {int(d.split()[0][1:]) for d in split_documents(docs, "heldout")}
    train_docs = {int(d.split()[0][1:]) for d in split_documents(docs, "train")}
    assert set(train.unique().tolist()) - {1} <= train_docs
    assert set(held.unique().tolist()) - {1} <= held_docs
    assert not set(train.unique().tolist()) & held_docs
    # the stream is the documents of the split, each followed by EOS, cut into whole blocks
    stream = [t for d in split_documents(docs, "train") for t in [int(d.split()[0][1:])] * len(d.split()) + [1]]
    assert train.shape[0] == len(stream) // 8
    assert train.flatten().tolist() == stream[: train.numel()]
    assert torch.equal(token_blocks(tok, docs, block_len=8), train)  # deterministic


def test_token_blocks_errors():
    tok = WordTokenizer()
    with pytest.raises(CorpusError, match="fewer than one block of 100"):
        token_blocks(tok, ["w5 w6", "w7"], block_len=100)
    with pytest.raises(CorpusError, match="block_len must be positive"):
        token_blocks(tok, ["w5 w6", "w7"], block_len=0)
    with pytest.raises(CorpusError, match="no tokenizer"):
        token_blocks(None, ["w5 w6", "w7"])
