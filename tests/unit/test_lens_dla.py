"""Logit lens and direct logit attribution on tiny models, against HF computed another way."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import KINDS, tiny, tokens
from uncover.attribution.dla import direct_logit_attribution
from uncover.lenses.logit_lens import logit_lens


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gemma2", "gpt_neox"])
def test_logit_lens_matches_hf_hidden_states(kind):
    m = tiny(kind)
    toks = tokens(batch=1, pos=6)
    r = logit_lens(m, toks, positions=None, targets=[5, 7], k=3)
    hf = m.model(toks, output_hidden_states=True)
    n = m.cfg.n_layers
    assert r.layers == list(range(n + 1))
    for layer in range(n + 1):
        h = hf.hidden_states[layer]
        if layer < n:  # HF's last hidden state is already normalised
            h = m.adapter.final_norm()(h)
        logits = m.model.lm_head(h)
        cap = m.adapter.final_softcap
        if cap:
            logits = torch.tanh(logits / cap) * cap
        probs = logits.softmax(-1)[0]  # [pos, vocab]
        torch.testing.assert_close(r.target_probs[0, layer, :, 0], probs[:, 5], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r.top_probs[0, layer, :, 0], probs.max(-1).values, rtol=1e-4, atol=1e-6)
        ranks = (probs > probs[:, 7:8]).sum(-1)
        assert r.target_ranks[0, layer, :, 1].tolist() == ranks.tolist()
    # the last layer's lens is the model's own output: zero KL
    assert r.kl_to_final[0, -1].abs().max() < 1e-5
    torch.testing.assert_close(r.top_probs[0, -1, -1, 0], hf.logits[0, -1].softmax(-1).max())
    frame = r.to_frame()
    assert set(frame["kind"]) == {"top", "target"} and len(frame) == (n + 1) * 6 * (3 + 2)
    json.loads(r.to_json())


@pytest.mark.parametrize("kind", KINDS)
def test_dla_sums_to_logit_difference(kind):
    m = tiny(kind)
    toks = tokens(batch=3, pos=7)
    r = direct_logit_attribution(m, toks, answer=[4, 9, 11], wrong=[5, 6, 7])
    logits = m.model(toks).logits[:, -1]
    true = logits[[0, 1, 2], [4, 9, 11]] - logits[[0, 1, 2], [5, 6, 7]]
    torch.testing.assert_close(r.contributions.sum(0), r.logit_diff, rtol=1e-4, atol=1e-4)
    if m.adapter.final_softcap is None:
        torch.testing.assert_close(r.logit_diff, true, rtol=1e-4, atol=1e-4)
    else:  # soft-capping is monotone: the sign agrees
        assert torch.equal(torch.sign(r.logit_diff), torch.sign(true))
    assert r.contributions.shape[0] == len(r.labels) == len(r.kinds)
    assert r.head_grid().shape == (m.cfg.n_layers, m.cfg.n_heads)


def test_dla_head_share_matches_manual_formula():
    """One head's share, computed by hand from its cached output: result / final scale * w · (W_U[a] - W_U[b])."""
    m = tiny("llama", dtype=torch.float64)
    toks = tokens(batch=1, pos=5)
    r = direct_logit_attribution(m, toks, answer=3, wrong=8)
    layer, head = 2, 1
    idx = r.labels.index(f"L{layer}H{head}")
    _, cache = m.run_with_cache(toks)
    scale = cache.final_resid()[0, -1].pow(2).mean().add(m.adapter.final_norm().variance_epsilon).sqrt()
    res = cache[f"blocks.{layer}.attn.hook_result"][0, -1, head]
    w = m.adapter.final_norm().weight
    direct = (res / scale * w) @ (m.W_U[:, 3] - m.W_U[:, 8])
    torch.testing.assert_close(r.contributions[idx, 0], direct, rtol=1e-5, atol=1e-6)


def test_lens_position_errors():
    m = tiny("llama")
    with pytest.raises(IndexError):
        logit_lens(m, tokens(batch=1, pos=4), positions=[10])
