"""Neurons: streaming top-k vs a full sort, value logits vs explicit matmuls, IG completeness,
knowledge-neuron filtering vs a manual filter, neuron interventions vs weight edits."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny, tokens
from uncover.core.errors import UncoverError
from uncover.hooks.streaming import StreamingTopK
from uncover.neurons import ablate_neurons, knowledge_neurons, neuron_logits, set_neurons, top_activations
from uncover.neurons.ablation import last_logits, neuron_means
from uncover.neurons.knowledge import ig_attributions, random_neurons
from uncover.neurons.kv import value_logits


@pytest.fixture(autouse=True)
def _one_thread(one_thread_no_grad):
    yield


def test_streaming_topk_equals_full_sort():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 7, 5, generator=g) for _ in range(4)]
    s = StreamingTopK(k=6, n_units=5, window=(2, 1), sample=10)
    for b in batches:
        s.update(b)
    full = torch.cat(batches).reshape(-1, 5)  # position index = row * 7 + p
    ref = full.sort(0, descending=True)
    assert torch.equal(s.values, ref.values[:6])
    assert torch.equal(s.index, ref.indices[:6])
    allrows = torch.cat(batches)  # [12, 7, 5]
    for r in range(6):
        for u in range(5):
            row, p = divmod(int(s.index[r, u]), 7)
            for j, off in enumerate(range(-2, 2)):
                q = p + off
                want = float(allrows[row, q, u]) if 0 <= q < 7 else 0.0
                assert float(s.windows[r, u, j]) == pytest.approx(want)
    assert s.sample.shape == (10, 5) and s.count == 84
    assert torch.allclose(s.positive.float() / 84, (full > 0).float().mean(0))
    # every sampled row really is a row of the data
    assert all(any(torch.equal(x, y) for y in full) for x in s.sample)


def test_top_activations_matches_cache():
    m = tiny("llama")
    toks = tokens(batch=6, pos=9, seed=3)
    r = top_activations(m, 1, units=[0, 5, 7], tokens=toks, k=4, batch_size=4, window=(3, 1))
    _, cache = m.run_with_cache(toks, ["blocks.1.mlp.hook_post"])
    acts = cache["blocks.1.mlp.hook_post"][..., [0, 5, 7]].reshape(-1, 3)
    ref = acts.sort(0, descending=True)
    assert torch.allclose(r.values, ref.values[:4].T, atol=1e-6)
    assert torch.equal(r.block * 9 + r.pos, ref.indices[:4].T)
    toks_ctx, ctx_acts, mark = r.context(1, 0)
    assert ctx_acts[mark] == pytest.approx(float(r.values[1, 0]), abs=1e-6)
    assert r.units == ["L1N0", "L1N5", "L1N7"]
    assert len(r.to_frame()) == 12 and "<span" in r.to_html()


def test_top_activations_direction():
    m = tiny("gpt2")
    toks = tokens(batch=4, pos=6, seed=4)
    d = torch.randn(2, m.cfg.d_model)
    r = top_activations(m, "blocks.0.hook_resid_post", direction=d, tokens=toks, k=3)
    _, cache = m.run_with_cache(toks, ["blocks.0.hook_resid_post"])
    proj = (cache["blocks.0.hook_resid_post"].reshape(-1, m.cfg.d_model) @ d.T)
    assert torch.allclose(r.values, proj.sort(0, descending=True).values[:3].T, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gemma", "gpt2"])
def test_value_logits_explicit(kind):
    m = tiny(kind)
    g, _, _ = m.adapter.norm_params(m.adapter.final_norm())
    w_out = m.W_out(2)
    ref = torch.stack([(w_out[i] * g) @ m.W_U for i in (1, 4)])
    assert torch.allclose(value_logits(m, 2, [1, 4]), ref, atol=1e-5)
    r = neuron_logits(m, 2, [1, 4], k=3, chunk=1)
    assert torch.equal(r.top_ids, ref.topk(3).indices)
    assert torch.equal(r.bottom_ids, (-ref).topk(3).indices)


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2"])
def test_ig_completeness(kind):
    m = tiny(kind)
    prompt = tokens(batch=1, pos=6, seed=5)
    target = 7
    with torch.enable_grad():
        attr, p = ig_attributions(m, prompt, target, [0, 2], steps=64, layers_per_pass=2)
    for j, layer in enumerate([0, 2]):
        def zero_last(v, hp):
            v = v.clone()
            v[:, -1] = 0
            return v

        with m.hooks([(f"blocks.{layer}.mlp.hook_post", zero_last)]):
            p0 = float(last_logits(m, prompt).softmax(-1)[0, target])
        assert float(attr[j].sum()) == pytest.approx(p - p0, rel=0.03, abs=1e-6)
    # one layer per pass gives the same attributions as two layers batched together
    with torch.enable_grad():
        attr1, _ = ig_attributions(m, prompt, target, [0, 2], steps=64, layers_per_pass=1)
    assert torch.allclose(attr, attr1, atol=1e-6)


def naive_ig(m, prompt, target, layer, steps):
    """One plain forward/backward per integration step through the whole model (no staging, no batching)."""
    with torch.no_grad():
        _, cache = m.run_with_cache(prompt, [f"blocks.{layer}.mlp.hook_post"])
    a = cache[f"blocks.{layer}.mlp.hook_post"][0, -1].double()
    total = torch.zeros_like(a)
    for k in range(steps):
        x = ((k + 0.5) / steps * a).float().requires_grad_(True)

        def put(v, hp, x=x):
            v = v.clone()
            v[:, -1] = x
            return v

        with torch.enable_grad(), m.hooks([(f"blocks.{layer}.mlp.hook_post", put)]):
            p = m(prompt)[0, -1].float().softmax(-1)[target]
            (g,) = torch.autograd.grad(p, [x])
        total += g.double()
    return (a * total / steps).float()


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gemma2"])
def test_ig_staged_pass_equals_naive_loop(kind):
    m = tiny(kind)
    prompt = tokens(batch=1, pos=7, seed=11)
    layers = [2, 0, 1]  # any order; staged passes of two layers, one of them starting mid-model
    attr, p = ig_attributions(m, prompt, 4, layers, steps=5, layers_per_pass=2)
    assert attr.shape == (3, m.cfg.d_mlp) and attr.abs().sum() > 0
    for j, layer in enumerate(layers):
        ref = naive_ig(m, prompt, 4, layer, 5)
        assert torch.allclose(attr[j], ref, atol=1e-6, rtol=1e-4), (layer, (attr[j] - ref).abs().max())
    assert p == pytest.approx(float(last_logits(m, prompt).softmax(-1)[0, 4]), abs=1e-6)
    assert all(q.requires_grad for q in m.model.parameters())  # the temporary freeze is undone
    with pytest.raises(UncoverError, match="valid: 0..2"):
        ig_attributions(m, prompt, 4, [3])


def test_knowledge_filter_matches_manual():
    m = tiny("llama")
    prompts = [tokens(batch=1, pos=5, seed=s) for s in (1, 2, 3)]
    with torch.enable_grad():
        kn = knowledge_neurons(m, prompts, 9, layers=[1, 2], steps=8, threshold=0.3, share=0.6)
        per = [ig_attributions(m, p, 9, [1, 2], steps=8)[0] for p in prompts]
    kept = [a > 0.3 * a.max() for a in per]
    count = sum(k.int() for k in kept)
    manual = {([1, 2][j], n) for j, n in (count >= 2).nonzero().tolist()}
    assert set(kn.neurons) == manual
    assert all(c >= 2 for c in kn.counts)
    assert len(random_neurons(m, kn.neurons)) == len(kn.neurons)


def test_set_neurons_equals_weight_edits():
    m = tiny("llama")
    toks = tokens(batch=2, pos=6, seed=6)
    neurons = [(1, 3), (1, 8), (2, 0)]
    for mode, factor in (("zero", 0.0), ("scale", 2.0)):
        with set_neurons(m, neurons, mode, factor):
            got = last_logits(m, toks)
        saved = {n: m.W_out(n[0])[n[1]].detach().clone() for n in neurons}
        with torch.no_grad():
            for (layer, i) in neurons:
                m.W_out(layer)[i].mul_(factor)
        try:
            ref = last_logits(m, toks)
        finally:
            with torch.no_grad():
                for (layer, i), w in saved.items():
                    m.W_out(layer)[i].copy_(w)
        assert torch.allclose(got, ref, atol=1e-5)


def test_ablate_neurons_mean_and_metric():
    m = tiny("qwen2")
    toks = tokens(batch=3, pos=5, seed=7)
    neurons = [(0, 2), (2, 5)]
    means = neuron_means(m, neurons, toks)
    _, cache = m.run_with_cache(toks, ["blocks.0.mlp.hook_post"])
    assert means[(0, 2)] == pytest.approx(float(cache["blocks.0.mlp.hook_post"][..., 2].mean()), abs=1e-6)
    metric = lambda logits: logits[:, 3]  # noqa: E731
    r = ablate_neurons(m, toks, neurons, metric, mode="mean")
    with set_neurons(m, neurons, "mean", means=means):
        ref = metric(last_logits(m, toks))
    assert torch.allclose(r.joint, ref) and r.single.shape == (2,)
    with set_neurons(m, [(0, 2)], "mean", means=means):
        single0 = float((metric(last_logits(m, toks)) - r.base).mean())
    assert float(r.single[0]) == pytest.approx(single0, abs=1e-6)
    assert "mean ablation" in r.title and len(r.to_frame()) == 2
