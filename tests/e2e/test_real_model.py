"""End-to-end: the parity identities and known results on the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest
import torch

from uncover import Add, Replace
from uncover.attribution.dla import direct_logit_attribution
from uncover.lenses.logit_lens import logit_lens

pytestmark = pytest.mark.e2e

FACT = "The Eiffel Tower is in the city of"
IOI = "When Mary and John went to the store, John gave a drink to"
IOI_SWAP = "When Mary and John went to the store, Mary gave a drink to"


def test_shape(real):
    c = real.cfg
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.d_model, c.d_head, c.d_vocab) == (30, 9, 3, 576, 64, 49152)
    assert real.to_str_tokens("Hello world") == ["Hello", " world"]


def test_noop_hooks_and_identities(real):
    prompts = [FACT, IOI]
    b = real.tokenize(prompts)
    plain = real.model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    logits, cache = real.run_with_cache(prompts)
    assert torch.equal(plain, logits)
    hs = real.model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True).hidden_states
    for layer in range(real.cfg.n_layers):
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_pre"], hs[layer])
    torch.testing.assert_close(cache.decompose_resid().tensor.sum(0), cache.final_resid(), rtol=1e-4, atol=1e-3)
    for layer in (0, 15, 29):
        torch.testing.assert_close(cache.head_results(layer).sum(-2), cache[f"blocks.{layer}.hook_attn_out"],
                                   rtol=1e-4, atol=1e-4)
        p = cache[f"blocks.{layer}.attn.hook_pattern"]
        torch.testing.assert_close(p.sum(-1)[b.attention_mask.bool().unsqueeze(1).expand_as(p.sum(-1))],
                                   torch.ones(int(b.attention_mask.sum()) * real.cfg.n_heads))
    torch.testing.assert_close(cache["ln_final.hook_normalized"] @ real.W_U, logits, rtol=1e-4, atol=1e-4)


def test_patterns_equal_eager(real):
    _, cache = real.run_with_cache(IOI, names=lambda n: n.endswith("hook_pattern"))
    impl = real.model.config._attn_implementation
    real.model.set_attn_implementation("eager")
    try:
        ref = real.model(real.to_tokens(IOI), output_attentions=True).attentions
    finally:
        real.model.set_attn_implementation(impl)
    for layer in (0, 10, 29):
        torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_pattern"], ref[layer], rtol=1e-4, atol=1e-5)


def test_logit_lens_finds_paris_late(real):
    r = logit_lens(real, FACT, targets=[" Paris"])
    ranks = r.target_ranks[0, :, -1, 0]
    assert ranks[-1] == 0 and r.target_probs[0, -1, -1, 0] > 0.3
    assert ranks[:10].min() > 20  # early layers do not know yet
    assert r.kl_to_final[0, -1, -1] < 1e-4


def test_dla_ioi(real):
    r = direct_logit_attribution(real, [IOI, IOI_SWAP], [" Mary", " John"], [" John", " Mary"])
    torch.testing.assert_close(r.contributions.sum(0), r.logit_diff, rtol=1e-4, atol=1e-3)
    logits = real([IOI, IOI_SWAP])[:, -1]
    mary, john = real.to_single_token(" Mary"), real.to_single_token(" John")
    true = torch.stack([logits[0, mary] - logits[0, john], logits[1, john] - logits[1, mary]])
    torch.testing.assert_close(r.logit_diff, true, rtol=1e-4, atol=1e-3)
    assert (r.logit_diff > 1).all()  # the model gets IOI right both ways
    heads = r.head_grid()
    assert heads.max() > 1.0  # a few heads (name movers) carry most of it
    assert heads[20:].sum() > heads[:10].sum()  # late layers, not early ones


def test_activation_patching_flips_ioi_answer(real):
    """Patching the clean residual stream at the last position into the corrupted run flips the answer
    late in the model, but not at layer 0 (where the last token ' to' is identical)."""
    mary, john = real.to_single_token(" Mary"), real.to_single_token(" John")
    _, clean = real.run_with_cache(IOI, names=lambda n: n.endswith("hook_resid_pre"))
    base = real(IOI_SWAP)[0, -1]
    assert base[john] > base[mary]
    diffs = {}
    for layer in (0, 26):
        name = f"blocks.{layer}.hook_resid_pre"
        with real.intervene([Replace(name, source=clean[name], positions=[-1])]):
            out = real(IOI_SWAP)[0, -1]
        diffs[layer] = float(out[mary] - out[john])
    assert diffs[0] < 0 < diffs[26]
    torch.testing.assert_close(real(IOI_SWAP)[0, -1], base)  # restored


def test_steering_changes_generation_and_restores(real):
    prompt = "I think that you are"
    plain = real.generate(prompt, max_new_tokens=8)
    _, c1 = real.run_with_cache(" love love love wonderful", names=["blocks.6.hook_resid_pre"])
    _, c2 = real.run_with_cache(" hate hate hate terrible", names=["blocks.6.hook_resid_pre"])
    vec = c1["blocks.6.hook_resid_pre"][0].mean(0) - c2["blocks.6.hook_resid_pre"][0].mean(0)
    with real.intervene([Add("blocks.6.hook_resid_pre", vector=vec, scale=4.0)]):
        steered = real.generate(prompt, max_new_tokens=8)
    assert steered != plain
    assert real.generate(prompt, max_new_tokens=8) == plain
