"""Activation datasets and labelled sets: reductions equal a naive gather, shards round-trip, loaders."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import V, tiny
from uncover.core.errors import UncoverError
from uncover.data.activations import ActivationSet, collect, collect_to_disk, iter_shards, load, resid_hooks
from uncover.data.labelled import (
    Labelled,
    from_file,
    honesty_pairs,
    pairs_from_file,
    sentiment_pairs,
    truth_pairs,
    truth_statements,
)

WORDS = ("the a movie food was is good bad great awful day of in city paris rome tokyo capital france japan italy "
         "i think that it love hate . yes no my very not and to").split()


def word_tokenizer():
    """A word-level Hugging Face tokenizer with fewer than ``V`` ids (for tiny random models)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    assert len(vocab) <= V
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def word_model(kind: str = "llama"):
    m = tiny(kind)
    m.tokenizer = word_tokenizer()
    return m


TEXTS = ["the movie was good", "the food was very bad .", "i think that it is great", "my day"]


@pytest.fixture
def wm(one_thread_no_grad):
    return word_model()


def test_reductions_equal_naive_gather(wm):
    hooks = ["blocks.1.hook_resid_post", "blocks.2.attn.hook_z"]
    _, cache = wm.run_with_cache(TEXTS, hooks)
    n_real = wm.tokenize(TEXTS).lengths.tolist()
    last = collect(wm, TEXTS, hooks, progress=False, batch_size=3)
    mean = collect(wm, TEXTS, hooks, where="mean", progress=False)
    spans = [(0, 2), (1, 4), (2, 3), (0, 1)]
    span = collect(wm, TEXTS, hooks, where="span", spans=spans, progress=False)
    mark = collect(wm, TEXTS, hooks, where="mark", marks=[1, 0, 3, 1], progress=False)
    second = collect(wm, TEXTS, hooks, where=1, progress=False)
    for h in hooks:
        for i, n in enumerate(n_real):
            full = cache[h][i]
            torch.testing.assert_close(last[h][i], full[n - 1])
            torch.testing.assert_close(mean[h][i], full[:n].mean(0))
            torch.testing.assert_close(span[h][i], full[spans[i][0] : spans[i][1]].mean(0))
            torch.testing.assert_close(mark[h][i], full[[1, 0, 3, 1][i]])
            torch.testing.assert_close(second[h][i], full[1])
    assert last["blocks.2.attn.hook_z"].shape == (4, 4, 8)


def test_shards_round_trip_with_labels(wm, tmp_path):
    data = Labelled("toy", TEXTS * 3, [0, 1, 1, 0] * 3, [str(i) for i in range(12)])
    hooks = resid_hooks(wm, [0, 2])
    ref = collect(wm, data, hooks, progress=False)
    paths = collect_to_disk(wm, data, hooks, tmp_path / "acts", shard_size=5, progress=False)
    assert [p.name for p in paths] == ["shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]
    assert [len(s) for s in iter_shards(tmp_path / "acts")] == [5, 5, 2]
    back = load(tmp_path / "acts")
    for h in hooks:
        assert torch.equal(back[h], ref[h])
    assert torch.equal(back.labels, data.y) and back.texts == data.texts and back.groups == data.groups
    sub = back.subset([2, 0])
    assert sub.texts == [TEXTS[2], TEXTS[0]] and sub.labels.tolist() == [1, 0]


def test_errors_name_the_problem(wm):
    with pytest.raises(UncoverError, match="empty dataset"):
        collect(wm, [], ["blocks.0.hook_resid_post"], progress=False)
    with pytest.raises(UncoverError, match="valid: last, mean, span, mark"):
        collect(wm, TEXTS, ["blocks.0.hook_resid_post"], where="first", progress=False)
    with pytest.raises(UncoverError, match="out of range"):
        resid_hooks(wm, [3])
    with pytest.raises(UncoverError, match="outside text"):
        collect(wm, TEXTS, ["blocks.0.hook_resid_post"], where=5, progress=False)
    with pytest.raises(UncoverError, match="no activations"):
        ActivationSet({}, [])["blocks.0.hook_resid_post"]


def test_builtin_sets_are_balanced_and_paired():
    s = truth_statements()
    assert len(s) >= 100 and sum(s.labels) * 2 == len(s)
    assert all(t.endswith(".") for t in s.texts) and s.groups[0] == s.groups[1]
    p = truth_pairs()
    assert len(p) * 2 == len(s) and set(p.labels) == {0, 1}
    for pos, neg, lab in zip(p.positive, p.negative, p.labels):  # exactly one side of each pair is true
        true_side = pos if lab else neg
        assert true_side in s.texts and s.labels[s.texts.index(true_side)] == 1
    sp = sentiment_pairs()
    assert len(sp) == 40 and all(a.split()[:-1] == b.split()[:-1] for a, b in zip(sp.positive, sp.negative))
    h = honesty_pairs()
    assert len(h) * 2 == len(s) and all("honest" in a or "truthful" in a or "sincere" in a for a in h.positive)
    assert sp.as_labelled().labels.count(1) == 40


def test_file_loaders(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\nnice day,pos\nbad day,neg\n", encoding="utf-8")
    d = from_file(tmp_path / "d.csv")
    assert d.labels == [1, 0] and d.label_names == ("neg", "pos")
    with open(tmp_path / "p.jsonl", "w") as f:
        f.write(json.dumps({"positive": "yes", "negative": "no", "label": 1}) + "\n")
    p = pairs_from_file(tmp_path / "p.jsonl")
    assert p.positive == ["yes"] and p.labels == [1]
    (tmp_path / "e.csv").write_text("text,label\n", encoding="utf-8")
    with pytest.raises(UncoverError, match="empty dataset"):
        from_file(tmp_path / "e.csv")
    (tmp_path / "bad.csv").write_text("words,label\nx,1\n", encoding="utf-8")
    with pytest.raises(UncoverError, match="columns needed: text, label"):
        from_file(tmp_path / "bad.csv")
    (tmp_path / "x.txt").write_text("hi", encoding="utf-8")
    with pytest.raises(UncoverError, match="valid: .csv, .jsonl"):
        from_file(tmp_path / "x.txt")
