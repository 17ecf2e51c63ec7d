"""The harvesting engine: the same values as a full cached forward, reductions over real tokens, early stop."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny, tiny_hf
from tests.unit.test_hooks import word_tokenizer
from uncover import HookedModel
from uncover.core.errors import UsageError
from uncover.hooks.harvest import capture, harvest, hook_values, reduce_positions, weighted_positions


@pytest.fixture
def model(one_thread_no_grad) -> HookedModel:
    return HookedModel(tiny_hf("llama"), word_tokenizer(), name="tiny-words")


TEXTS = ["w3 w4 w5 w6 w7 w8", "w9 w10", "w11 w12 w13 w14 w15 w16 w17 w18", "w19 w20 w21", "w22"]


@pytest.mark.parametrize("reduce", ["none", "last", "mean", 0, 1])
def test_harvest_equals_run_with_cache_reduced(model, reduce):
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern"]
    texts = TEXTS if not isinstance(reduce, int) or reduce < 1 else TEXTS[:4]
    got = list(harvest(model, texts, names, batch_size=3, reduce=reduce))
    assert [len(b.input_ids) for b, _ in got] == [3, len(texts) - 3]
    for start, (batch, vals) in zip((0, 3), got):
        _, cache = model.run_with_cache(texts[start:start + 3], names)
        for n in names:
            ref = reduce_positions(cache[n], batch, reduce, n)
            assert torch.equal(vals[n], ref.float().cpu()), (n, reduce)
    if reduce == "mean":  # the mean ignores padding: equal to each text alone
        alone = reduce_positions(model.run_with_cache(TEXTS[1], names)[1][names[0]],
                                 model.tokenize(TEXTS[1]), "mean")
        torch.testing.assert_close(got[0][1][names[0]][1], alone[0], rtol=1e-5, atol=1e-6)


def test_capture_stops_after_the_last_needed_layer(model):
    ran = []
    handle = model.model.model.layers[2].register_forward_hook(lambda *a: ran.append(1))
    try:
        capture(model, TEXTS, ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"])
        assert ran == []
        capture(model, TEXTS, ["blocks.0.hook_resid_post"], stop=False)
        assert ran == [1]
        _, got = capture(model, TEXTS, ["logits", "blocks.0.hook_resid_post"])  # logits need the whole pass
        assert got["logits"].shape[-1] == model.cfg.d_vocab
    finally:
        handle.remove()


def test_harvest_token_blocks_and_bad_settings(one_thread_no_grad):
    m = tiny("gpt2")
    blocks = torch.randint(0, 60, (5, 7))
    vals = torch.cat([v["hook_embed"] for _, v in harvest(m, blocks, ["hook_embed"], batch_size=2, reduce="last")])
    _, cache = m.run_with_cache(blocks, ["hook_embed"])
    assert torch.equal(vals, cache["hook_embed"][:, -1])
    with pytest.raises(UsageError, match="batch_size"):
        next(harvest(m, blocks, ["hook_embed"], batch_size=0))
    with pytest.raises(UsageError, match="beyond a prompt"):
        next(harvest(m, blocks, ["hook_embed"], reduce=99))


def test_weights_are_reduced_in_the_hook_and_padding_never_enters(model):
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"]
    seen = []

    def first_two(batch, rows):  # the mean of each text's first two real tokens
        seen.append((rows.start, rows.stop))
        w = torch.zeros(batch.input_ids.shape)
        w[:, :2] = 0.5
        return w

    texts = TEXTS[:4]
    got = list(harvest(model, texts, names, batch_size=3, reduce=first_two))
    assert seen == [(0, 3), (3, 4)]
    for start, (batch, vals) in zip((0, 3), got):
        _, cache = model.run_with_cache(texts[start:start + 3], names)
        ref = cache[names[0]][:, :2].float().mean(1)
        torch.testing.assert_close(vals[names[0]], ref)
        assert vals[names[1]].shape == (len(batch.input_ids), model.cfg.n_heads, batch.input_ids.shape[1])
        torch.testing.assert_close(vals[names[1]], cache[names[1]][:, :, :2].float().mean(2))  # query positions
    nan = torch.tensor([[[1.0], [float("nan")]]])
    assert weighted_positions(nan, torch.tensor([[1.0, 0.0]])).tolist() == [[1.0]]


def test_capture_keeps_what_keep_returns_as_soon_as_computed(model):
    sizes = []

    def keep(name, v):
        sizes.append(v.shape)
        return v[:, -1].sum(-1)

    batch, got = capture(model, TEXTS[:2], ["blocks.0.hook_resid_post", "blocks.2.hook_mlp_out"], keep=keep)
    assert [s[0] for s in sizes] == [2, 2] and got["blocks.2.hook_mlp_out"].shape == (2,)
    _, full = capture(model, TEXTS[:2], ["logits"], keep=lambda n, v: v[:, :1])  # the full-pass path keeps too
    assert full["logits"].shape == (2, 1, model.cfg.d_vocab)


def test_hook_values_flattens_heads_and_matches_the_cache(one_thread_no_grad):
    m = tiny("llama-gqa")
    blocks = torch.randint(0, 60, (5, 6))
    vals = list(hook_values(m, blocks, "blocks.1.attn.hook_z", batch_size=2))
    assert [v.shape for v in vals] == [(2, 6, 32), (2, 6, 32), (1, 6, 32)]
    _, cache = m.run_with_cache(blocks, ["blocks.1.attn.hook_z"])
    assert torch.equal(torch.cat(vals), cache["blocks.1.attn.hook_z"].flatten(2))
    last = torch.cat(list(hook_values(m, blocks, "blocks.1.attn.hook_z", reduce="last")))
    assert torch.equal(last, cache["blocks.1.attn.hook_z"][:, -1].flatten(1))
