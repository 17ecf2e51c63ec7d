"""Fixtures of the scale tests: a tiny word-level model saved to disk (Ray workers load it by path) and corpora."""

from __future__ import annotations

import os

import pytest
import torch

from tests.conftest import tiny_hf, word_level_tokenizer

WORDS = (
    "the tower is in city of paris rome london big ben colosseum a movie was good bad it and to there then "
    "when we you i be at on for with this that capital france italy england language french italian"
).split()


def word_tokenizer():
    return word_level_tokenizer(WORDS)


def documents(n: int = 40, seed: int = 0) -> list[str]:
    """``n`` documents of random words (a few to a few dozen words each)."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n):
        k = int(torch.randint(3, 30, (1,), generator=g))
        docs.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)))
    return docs


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny llama with a word tokenizer, saved as a Hugging Face directory."""
    d = tmp_path_factory.mktemp("tiny-llama")
    m = tiny_hf("llama")
    for c in (m.config, m.generation_config):
        c.bos_token_id = c.eos_token_id = 1
        c.pad_token_id = 0
    m.save_pretrained(d)
    word_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from uncover.hooks.hooked import load

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return load(tiny_dir, device="cpu")


@pytest.fixture
def corpus_file(tmp_path):
    """A JSONL corpus of 40 random-word documents."""
    import json

    p = tmp_path / "corpus.jsonl"
    p.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(documents())), encoding="utf-8")
    return p
