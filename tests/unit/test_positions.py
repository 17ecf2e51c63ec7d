"""Padding and position addressing: real-token positions, whatever the padding."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import KINDS, tiny, tokens
from uncover import Add, Mean, Zero
from uncover.core.errors import UncoverError
from uncover.hooks.engine import ForwardState
from uncover.hooks.tokens import Batch, position_columns

pytestmark = pytest.mark.usefixtures("one_thread_no_grad")


def right_padded(lengths: list[int], seed: int = 1) -> tuple[Batch, list[torch.Tensor]]:
    """A right-padded batch of random prompts and the prompts alone."""
    n = max(lengths)
    ids = tokens(len(lengths), n, seed=seed)
    mask = (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    return Batch(ids, mask), [ids[i : i + 1, :k] for i, k in enumerate(lengths)]


# ---- column arithmetic ----------------------------------------------------------------------------
def test_columns_right_padding():
    b, _ = right_padded([5, 3, 1])
    assert b.columns(-1).tolist() == [[4], [2], [0]]
    assert b.columns([0, -1, -2, 2]).tolist() == [[0, 4, 3, 2], [0, 2, 1, 2], [0, 0, -1, -1]]
    assert b.columns(7).tolist() == [[-1], [-1], [-1]]  # past the end
    assert b.columns(-6).tolist() == [[-1], [-1], [-1]]  # before the start
    assert b.lengths.tolist() == [5, 3, 1]


def test_columns_left_padding():
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]])
    b = Batch(torch.zeros_like(mask), mask)
    assert b.columns(0).tolist() == [[0], [2], [3]]
    assert b.columns(-1).tolist() == [[3], [3], [3]]
    assert b.columns([1, -2]).tolist() == [[1, 2], [3, 2], [-1, -1]]


def test_columns_of_a_decoding_step():
    """With 5 cached columns and 1 new one, only positions of the new token are in this forward."""
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    assert position_columns(mask, [-1, -2, 0], offset=5, q_len=1).tolist() == [[0, -1, -1], [0, -1, -1]]
    assert position_columns(mask, [3], offset=5, q_len=1).tolist() == [[0], [-1]]
    st = ForwardState(attention_mask=None, offset=2, q_len=3, batch=2)
    assert st.columns([-1, 0, 2], torch.device("cpu")).tolist() == [[2, -1, 0], [2, -1, 0]]


def test_columns_need_explicit_positions():
    b, _ = right_padded([2, 2])
    with pytest.raises(ValueError):
        b.columns(None)


# ---- padded batches against single prompts ----------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_padded_rows_equal_prompts_alone(kind):
    m = tiny(kind)
    batch, alone = right_padded([7, 4, 2])
    logits = m(batch)
    for i, ids in enumerate(alone):
        n = ids.shape[1]
        torch.testing.assert_close(logits[i, :n], m(ids)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_add_at_last_position_hits_each_rows_last_real_token(kind):
    m = tiny(kind)
    batch, alone = right_padded([7, 4, 2])
    vec = torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(0))
    name = "blocks.1.hook_resid_pre"
    seen = {}

    def rec(key):
        return lambda v, hp: seen.__setitem__(key, v.clone())

    with m.hooks([(name, rec("before"))]), m.intervene([Add(name, vector=vec, positions=-1)]):
        with m.hooks([(name, rec("after"))]):
            logits = m(batch)
    delta = seen["after"] - seen["before"]
    for i, n in enumerate([7, 4, 2]):
        torch.testing.assert_close(delta[i, n - 1], vec, rtol=1e-5, atol=1e-5)
        delta[i, n - 1] = 0
    assert delta.abs().max() == 0  # nowhere else, padding included
    for i, ids in enumerate(alone):
        n = ids.shape[1]
        with m.intervene([Add(name, vector=vec, positions=[-1])]):
            one = m(ids)[0]
        torch.testing.assert_close(logits[i, :n], one, rtol=1e-5, atol=1e-5)
        assert (one - m(ids)[0]).abs().max() > 1e-4


def test_zero_heads_at_negative_positions_equals_manual_on_padded_batch():
    m = tiny("llama-gqa")
    batch, _ = right_padded([6, 3])
    d = m.cfg.d_head
    cols = {0: [0, 4], 1: [0, 1]}  # positions 0 and -2 of each row

    def fn(x):
        x = x.clone()
        for row, cs in cols.items():
            for c in cs:
                for h in (1, 3):
                    x[row, c, h * d : (h + 1) * d] = 0
        return x

    o = m.adapter.attn_part(1, m.adapter.family.o)
    hnd = o.register_forward_pre_hook(lambda mod, args: (fn(args[0]),))
    try:
        ref = m.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    finally:
        hnd.remove()
    with m.intervene([Zero("blocks.1.attn.hook_z", positions=[0, -2], heads=[1, 3])]):
        got = m(batch)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(got[real], ref[real], rtol=1e-6, atol=1e-6)


def test_positions_missing_in_a_row_leave_that_row_alone():
    m = tiny("llama")
    batch, alone = right_padded([6, 3])
    with m.intervene([Zero("blocks.0.hook_resid_post", positions=[4])]):
        got = m(batch)
    torch.testing.assert_close(got[1, :3], m(alone[1])[0], rtol=1e-5, atol=1e-5)  # row 1 has no position 4
    assert (got[0, 4:] - m(alone[0])[0, 4:]).abs().max() > 1e-4
    torch.testing.assert_close(got[0, :4], m(alone[0])[0, :4], rtol=1e-5, atol=1e-5)
    # a position in no row at all is a mistake (issue 13: it used to do nothing, silently)
    with pytest.raises(UncoverError, match="beyond every prompt"), m.intervene(
            [Zero("blocks.0.hook_resid_post", positions=[40])]):
        m(batch)


def test_mean_ablation_of_a_padded_batch_ignores_padding():
    """Mean over real tokens: the same whether the batch is padded or not."""
    m = tiny("llama")
    name = "blocks.0.hook_mlp_out"
    batch, alone = right_padded([5, 5])
    with m.intervene([Mean(name)]):
        unpadded = m(batch)
    ids = torch.cat([batch.input_ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    mask = torch.cat([batch.attention_mask, torch.zeros(2, 3, dtype=torch.long)], 1)
    with m.intervene([Mean(name)]):
        padded = m(Batch(ids, mask))
    torch.testing.assert_close(padded[:, :5], unpadded, rtol=1e-5, atol=1e-5)


def test_pattern_positions_are_query_positions_on_padded_batches():
    m = tiny("llama")
    batch, alone = right_padded([6, 3])
    name = "blocks.1.attn.hook_pattern"
    with m.intervene([Zero(name, positions=[-1], heads=[2])]):
        got = m(batch)
    with m.intervene([Zero("blocks.1.attn.hook_z", positions=[-1], heads=[2])]):
        ref = m(batch)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(got[real], ref[real], rtol=1e-5, atol=1e-5)
    for i, ids in enumerate(alone):
        n = ids.shape[1]
        with m.intervene([Zero(name, positions=[-1], heads=[2])]):
            torch.testing.assert_close(got[i, :n], m(ids)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_positions_follow_the_mask_however_the_model_is_called(kind):
    """Calling the HF model directly, with the mask positional or by keyword, addresses the same
    real tokens (GPT-2's second positional argument is the cache, Llama's the mask)."""
    m = tiny(kind)
    batch, _ = right_padded([6, 3])
    iv = Zero("blocks.0.hook_resid_post", positions=[-1])
    with m.intervene([iv]):
        ref = m(batch)
        by_kw = m.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        if kind == "llama":
            positional = m.model(batch.input_ids, batch.attention_mask).logits
        else:
            positional = m.model(batch.input_ids, None, batch.attention_mask).logits
    real = batch.attention_mask.bool()
    for got in (by_kw, positional):
        torch.testing.assert_close(got[real], ref[real], rtol=0, atol=0)
