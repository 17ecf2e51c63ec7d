"""DoLa on tiny models against a naive re-implementation (HF hidden states, explicit JSD, no KV cache)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import tiny, tokens
from uncover.core.errors import UncoverError
from uncover.decoding import candidate_layers, contrast, dola_generate, dola_scores
from uncover.decoding.dola import jensen_shannon, penalise_repeats

pytestmark = pytest.mark.usefixtures("one_thread_no_grad")


def naive_step(m, ids, layers, alpha=0.1):
    """Scores at the last position of ``ids`` [1, pos], computed the slow obvious way in float64."""
    out = m.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    final = torch.log_softmax(out.logits[0, -1].double(), -1)
    head, norm = m.model.get_output_embeddings(), m.model.model.norm
    best, best_j, base = -1.0, None, None
    for layer in layers:
        early = torch.log_softmax(head(norm(out.hidden_states[layer][:, -1]))[0].double(), -1)
        p, q = final.exp(), early.exp()
        mid = (p + q) / 2
        js = 0.5 * sum(float(p[i] * math.log(p[i] / mid[i])) + float(q[i] * math.log(q[i] / mid[i]))
                       for i in range(len(p)))
        if js > best:
            best, best_j, base = js, layer, early
    probs = final.exp()
    keep = probs >= alpha * probs.max()
    scores = torch.where(keep, final - base, torch.tensor(-math.inf, dtype=torch.float64))
    return scores, best_j


def naive_penalty(scores, ids, penalty):
    scores = scores.clone()
    for t in set(ids.flatten().tolist()):
        scores[t] = scores[t] * penalty if scores[t] < 0 else scores[t] / penalty
    return scores


@pytest.mark.parametrize("kind", ["llama", "llama-gqa"])
def test_dola_scores_equal_naive(kind):
    m = tiny(kind)
    x = tokens(3, 7)
    scores, chosen, jsd = dola_scores(m, x, [0, 1, 2])
    for b in range(3):
        ref, layer = naive_step(m, x[b : b + 1], [0, 1, 2])
        assert int(chosen[b]) == layer
        assert torch.equal(torch.isinf(scores[b]), torch.isinf(ref))
        fin = ~torch.isinf(ref)
        torch.testing.assert_close(scores[b][fin].double(), ref[fin], rtol=1e-5, atol=1e-5)
    assert jsd.shape == (3, 3) and (jsd >= 0).all()


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_dola_generate_equals_naive_loop(penalty):
    m = tiny("llama-gqa")
    prompt = tokens(1, 5, seed=4)
    layers = [0, 1, 2]
    got = dola_generate(m, prompt, 6, layers=layers, repetition_penalty=penalty)
    ids = prompt.clone()
    for step in range(6):
        ref, layer = naive_step(m, ids, layers)
        ref = naive_penalty(ref, ids, penalty)
        nxt = int(ref.argmax())
        assert got.token_ids[step] == nxt and got.premature_layers[step] == layer, step
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    assert len(got.to_frame()) == 6 and got.plot().data


def test_greedy_mode_equals_hf_generate():
    m = tiny("llama")
    prompt = tokens(1, 5, seed=2)
    got = dola_generate(m, prompt, 5, layers=[1], contrastive=False)
    hf = m.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False,
                          pad_token_id=0)
    assert got.token_ids == hf[0, 5:].tolist()
    assert got.greedy_tokens == got.tokens


def test_contrast_identities():
    g = torch.Generator().manual_seed(0)
    final = torch.randn(2, 50, generator=g) * 3
    prem = torch.randn(4, 2, 50, generator=g)
    prem[2] = final  # identical to the final layer: JSD 0, never chosen
    scores, chosen, jsd = contrast(final, prem, alpha=0.1)
    assert torch.allclose(jsd[:, 2], torch.zeros(2), atol=1e-6) and (chosen != 2).all()
    lf = torch.log_softmax(final, -1)
    keep = lf.exp() >= 0.1 * lf.exp().max(-1, keepdim=True).values
    assert torch.equal(~torch.isinf(scores), keep)
    assert (keep.sum(-1) >= 1).all()
    # alpha = 1 keeps only the final layer's top token
    s1, _, _ = contrast(final, prem, alpha=1.0)
    assert torch.equal((~torch.isinf(s1)).nonzero()[:, 1], final.argmax(-1))
    # JSD is symmetric and bounded by log 2
    a, b = torch.log_softmax(final, -1), torch.log_softmax(prem[0], -1)
    torch.testing.assert_close(jensen_shannon(a, b), jensen_shannon(b, a))
    assert (jensen_shannon(a, b) <= math.log(2) + 1e-6).all()


def test_penalty_equals_naive():
    s = torch.randn(1, 30, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[3, 7, 7, 12]])
    torch.testing.assert_close(penalise_repeats(s, ids, 1.5)[0], naive_penalty(s[0], ids, 1.5))


def test_buckets_and_errors():
    m = tiny("llama")  # 3 layers, untied embeddings
    assert candidate_layers(m, "high") == [1]
    assert candidate_layers(m, "low") == [2]
    assert candidate_layers(m, "0,2") == [0, 2]
    for bad in ("middle", [3], [-1], []):
        with pytest.raises(UncoverError, match="valid|must be in"):
            candidate_layers(m, bad)
    with pytest.raises(UncoverError, match="alpha"):
        contrast(torch.zeros(1, 4), torch.zeros(1, 1, 4), alpha=0.0)
    with pytest.raises(UncoverError, match="max_new_tokens"):
        dola_generate(m, tokens(1, 3), 0)

