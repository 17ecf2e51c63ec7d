"""Causal tracing (batched, staged) against one forward pass per restoration under the same noise."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny, tokens
from uncover import Replace
from uncover.core.errors import UncoverError
from uncover.patching.causal_tracing import (
    CATEGORIES,
    CausalTraceResult,
    causal_trace,
    noise_hook,
    noise_scale,
    subject_noise,
    window_layers,
)
from uncover.patching.trace_facts import average_traces, token_categories

SITE = {"hidden": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}


def _peaked(kind: str, scale: float = 30.0):
    """A tiny model whose output distribution is peaked, so probabilities really move under noise."""
    m = tiny(kind)
    with torch.no_grad():
        m.model.get_output_embeddings().weight.mul_(scale)
    return m


def _naive(m, ids, subj, answer, kind, layer, p, eps, window, clean):
    """Mean over noise samples of p(answer) with one forward pass per (sample, restoration)."""
    layers = [layer] if kind == "hidden" else list(window_layers(layer, window, m.cfg.n_layers))
    names = [f"blocks.{j}.{SITE[kind]}" for j in layers]
    out = []
    for s in range(eps.shape[0]):
        restore = [Replace(n, source=clean[n], positions=[p]) for n in names]
        with m.hooks([("hook_embed", noise_hook(subj, eps[s : s + 1]))]), m.intervene(restore):
            out.append(float(m(ids)[0, -1].softmax(-1)[answer]))
    return sum(out) / len(out)


@pytest.mark.parametrize("family, scale, smallest", [("llama-gqa", 30.0, 1e-2), ("gemma2", 30.0, 1e-2),
                                                    ("gpt_neox", 30.0, 1e-2), ("gpt2", 8.0, 1e-4)])
def test_every_cell_equals_one_forward_per_restoration(family, scale, smallest, one_thread_no_grad):
    m = _peaked(family, scale)  # (tiny GPT-2 saturates: its effects stay small)
    ids, subj, samples, window = tokens(batch=1, pos=7, seed=3), [2, 3], 3, 2
    # max_rows=20 splits the samples over several batched passes
    r = causal_trace(m, ids, subj, kind="all", window=window, samples=samples, noise=20.0, seed=5, max_rows=20)
    answer = int(m(ids)[0, -1].argmax())
    assert r.answer == f"<{answer}>"
    eps = subject_noise(m, samples, len(subj), noise_scale(m, 20.0), seed=5)
    names = [f"blocks.{i}.{s}" for i in range(m.cfg.n_layers) for s in SITE.values()]
    _, clean = m.run_with_cache(ids, names=names)
    corrupt = []
    for s in range(samples):
        with m.hooks([("hook_embed", noise_hook(subj, eps[s : s + 1]))]):
            corrupt.append(float(m(ids)[0, -1].softmax(-1)[answer]))
    corrupt_prob = sum(corrupt) / samples
    assert abs(r.corrupt_prob - corrupt_prob) < 1e-6
    assert abs(r.clean_prob - float(m(ids)[0, -1].softmax(-1)[answer])) < 1e-6
    for kind in ("hidden", "mlp", "attn"):
        g = r.grids[kind]
        assert g.shape == (m.cfg.n_layers, 7)
        assert g.abs().max() > smallest / 5  # the comparison below is not between zeros
        for layer in range(m.cfg.n_layers):
            for p in range(7):
                ref = _naive(m, ids, subj, answer, kind, layer, p, eps, window, clean) - corrupt_prob
                assert abs(float(g[layer, p]) - ref) < 2e-6, (kind, layer, p)


def test_identities(one_thread_no_grad):
    m = _peaked("llama")
    ids = tokens(batch=1, pos=6, seed=2)
    r = causal_trace(m, ids, [1, 2], kind=["hidden", "mlp"], samples=4, window=10, noise=20.0)
    assert r.clean_prob - r.corrupt_prob > 1e-2
    n = m.cfg.n_layers
    # tokens before the subject never see the noise
    assert torch.all(r.grids["hidden"][:, 0] == 0) and torch.all(r.grids["mlp"][:, 0] == 0)
    # restoring the final hidden state at the last token restores the clean run exactly
    assert abs(float(r.grids["hidden"][n - 1, 5]) - (r.clean_prob - r.corrupt_prob)) < 1e-6
    assert torch.all(r.grids["hidden"][n - 1, :5].abs() < 1e-7)
    # a window as wide as the model restores every layer's MLP output at that token
    assert torch.allclose(r.grids["mlp"][0], r.grids["mlp"][n - 1])


def test_noise_is_seeded_and_scaled():
    m = tiny("llama")
    a, b = subject_noise(m, 3, 2, 1.0, seed=1), subject_noise(m, 3, 2, 1.0, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, subject_noise(m, 3, 2, 1.0, seed=2))
    assert abs(noise_scale(m) - 3 * float(m.W_E.detach().std())) < 1e-6
    big = subject_noise(m, 64, 16, 2.0)
    assert 1.9 < float(big.std()) < 2.1


def test_categories_and_average():
    cats = token_categories([1, 2, 3, 4], 9)
    assert cats == {"first subject token": [1], "middle subject tokens": [2, 3], "last subject token": [4],
                    "first subsequent token": [5], "further tokens": [6, 7], "last token": [8]}
    short = token_categories([0, 1], 3)  # the first subsequent token is the last token
    assert short["first subsequent token"] == [] and short["last token"] == [2]
    assert token_categories([2], 4)["first subject token"] == token_categories([2], 4)["last subject token"] == [2]

    def res(grid, subject):
        return CausalTraceResult(grids={"hidden": grid}, str_tokens=[str(i) for i in range(grid.shape[1])],
                                 subject=subject, answer="x", clean_prob=0.8, corrupt_prob=0.2, samples=1,
                                 noise=0.1, window=10)

    g1 = torch.arange(2 * 9, dtype=torch.float).view(2, 9)
    g2 = 100 + torch.arange(2 * 3, dtype=torch.float).view(2, 3)
    avg = average_traces([res(g1, [1, 2, 3, 4]), res(g2, [0, 1])])
    assert avg.str_tokens == list(CATEGORIES) and avg.n_prompts == 2
    h = avg.grids["hidden"]
    assert h[0, 0] == (g1[0, 1] + g2[0, 0]) / 2  # first subject token
    assert h[1, 1] == g1[1, 2:4].mean()  # only the first prompt has middle subject tokens
    assert h[0, 3] == g1[0, 5] and h[0, 4] == g1[0, 6:8].mean()
    assert h[1, 5] == (g1[1, 8] + g2[1, 2]) / 2


def test_result_views_and_errors(one_thread_no_grad):
    m = tiny("llama")
    ids = tokens(batch=1, pos=5)
    r = causal_trace(m, ids, [1], kind="attn", samples=2, window=1)
    assert list(r.grids) == ["attn"] and len(r.to_frame()) == m.cfg.n_layers * 5
    assert r.marked_tokens()[1].endswith("*") and "attn: peak" in r.summary()
    assert len(r.plot().data) == 1 and '"kind": "CausalTraceResult"' in r.to_json()
    with pytest.raises(UncoverError, match="valid: hidden, mlp, attn, all"):
        causal_trace(m, ids, [1], kind="resid")
    with pytest.raises(UncoverError, match="window"):
        causal_trace(m, ids, [1], kind="mlp", window=0)
    with pytest.raises(UncoverError, match="outside"):
        causal_trace(m, ids, [7])
    with pytest.raises(UncoverError, match="token positions"):
        causal_trace(m, ids, "Paris")
