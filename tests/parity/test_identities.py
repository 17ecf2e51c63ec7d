"""Parity gate: per family, uncover's hooks against the plain HF model."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tokens
from tests.families.kinds import ALL_KINDS as KINDS
from tests.families.kinds import family_hf as tiny_hf
from tests.families.kinds import family_model as tiny
from tests.families.moe_ref import expert_by_hand, route_by_hand
from uncover import HookedModel
from uncover.core.errors import UncoverError


def _identity_hooks(m: HookedModel):
    return [(n, lambda v, hp: v) for n in m.hook_names()]


@pytest.mark.parametrize("kind", KINDS)
def test_noop_hooks_bit_identical(kind):
    m = tiny(kind)
    toks = tokens()
    plain = m.model(toks).logits
    with m.hooks(_identity_hooks(m)):
        hooked = m(toks)
    assert torch.equal(plain, hooked)
    logits, cache = m.run_with_cache(toks)
    assert torch.equal(plain, logits)
    assert len(cache) == len(m.hook_names())


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("kind", KINDS)
def test_residual_identities(kind, dtype, tol):
    m = tiny(kind, dtype=dtype)
    toks = tokens()
    logits, cache = m.run_with_cache(toks)
    hs = m.model(toks, output_hidden_states=True).hidden_states
    n = m.cfg.n_layers
    for layer in range(n):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_pre"], hs[layer], rtol=0, atol=0)
    torch.testing.assert_close(cache["ln_final.hook_normalized"], hs[n], rtol=0, atol=0)
    # embed + sum of attention and MLP outputs is the final residual
    comps, labels = cache.decompose_resid()
    assert labels[0] == "embed" and len(labels) == 2 * n + (2 if m.adapter.family.pos_embed else 1)
    torch.testing.assert_close(comps.sum(0), cache.final_resid(), rtol=tol, atol=tol)
    # heads sum (plus output bias) to hook_attn_out; Gemma's norms compute in float32 even in
    # a float64 model, so post-norm families cannot do better than float32 rounding there
    head_tol = max(tol, 1e-6) if m.adapter.family.attn_post_norm else tol
    for layer in range(n):
        heads = cache.head_results(layer).sum(-2)
        b = m.adapter.b_O(layer)
        if b is not None:
            heads = heads + b
        torch.testing.assert_close(heads, cache[f"blocks.{layer}.hook_attn_out"], rtol=head_tol, atol=head_tol)
        res = cache[f"blocks.{layer}.attn.hook_result"].sum(-2) + (0 if b is None else b)
        o_in = cache[f"blocks.{layer}.attn.hook_z"].flatten(-2)
        o_out = m.adapter.attn_part(layer, m.adapter.family.o)(o_in) * m.adapter.residual_multiplier  # Granite
        torch.testing.assert_close(res, o_out, rtol=tol, atol=tol)
        if not m.cfg.parallel_attn_mlp:
            torch.testing.assert_close(
                cache[f"blocks.{layer}.hook_resid_mid"],
                cache[f"blocks.{layer}.hook_resid_pre"] + cache[f"blocks.{layer}.hook_attn_out"],
                rtol=0, atol=0,
            )
    # final norm + unembed of the cached final residual reproduces the logits
    out = cache["ln_final.hook_normalized"] @ m.W_U
    if m.adapter.b_U is not None:
        out = out + m.adapter.b_U
    out = out * m.adapter.logit_scale  # Cohere: the model scales the unembedding's output
    cap = m.adapter.final_softcap
    if cap:
        out = torch.tanh(out / cap) * cap
    torch.testing.assert_close(out, logits, rtol=tol, atol=tol)
    torch.testing.assert_close(m.adapter.final_norm()(cache.final_resid()), cache["ln_final.hook_normalized"])


@pytest.mark.parametrize("kind", KINDS)
def test_patterns_match_eager(kind):
    m = tiny(kind)
    eager = tiny_hf(kind, attn="eager")
    toks = tokens()
    _, cache = m.run_with_cache(toks, names=lambda n: "hook_pattern" in n or "attn_scores" in n)
    ref = eager(toks, output_attentions=True).attentions
    for layer in range(m.cfg.n_layers):
        p = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert p.shape == (2, m.cfg.n_heads, 8, 8)
        total = p.sum(-1)
        if m.adapter.family.attn_sinks:  # gpt-oss: the sink takes exp(s) / (exp(s) + Σ exp(scores)) of each row
            s = cache[f"blocks.{layer}.attn.hook_attn_scores"].double()
            sink = getattr(m.adapter.attn(layer), m.adapter.family.attn_sinks).double()[None, :, None]
            total = total + (1 / (1 + (s - sink[..., None]).exp().sum(-1))).to(total.dtype)
            assert bool((p.sum(-1) < 0.99).any())  # realistic sinks take a visible share
        torch.testing.assert_close(total, torch.ones_like(total))
        torch.testing.assert_close(p, ref[layer], rtol=1e-5, atol=1e-6)
        if m.adapter.family.pattern_at:  # inline attention (Bloom): no scores hook; the mask zeroes the future
            assert p[0, 0, 0, 1] == 0
            continue
        s = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        assert torch.isinf(s[0, 0, 0, 1])  # causal mask is -inf


@pytest.mark.parametrize("kind", KINDS)
def test_weights_reproduce_activations(kind):
    m = tiny(kind, dtype=torch.float64)
    toks = tokens()
    _, cache = m.run_with_cache(toks)
    f = m.adapter.family
    for layer in range(m.cfg.n_layers):
        x = cache[f"blocks.{layer}.ln1.hook_normalized"]
        bq, bk, bv = m.adapter.b_QKV(layer)
        v = torch.einsum("bpm,hmd->bphd", x, m.W_V(layer)) + (0 if bv is None else bv)
        torch.testing.assert_close(v, cache[f"blocks.{layer}.attn.hook_v"])
        if f.q_norm is None:
            q = torch.einsum("bpm,hmd->bphd", x, m.W_Q(layer)) + (0 if bq is None else bq)
            torch.testing.assert_close(q, cache[f"blocks.{layer}.attn.hook_q"])
            k = torch.einsum("bpm,hmd->bphd", x, m.W_K(layer)) + (0 if bk is None else bk)
            torch.testing.assert_close(k, cache[f"blocks.{layer}.attn.hook_k"])
        x2 = cache[f"blocks.{layer}.ln2.hook_normalized"]
        if m.cfg.n_experts:
            _check_experts(m, cache, layer, x2)
            continue
        pre = cache[f"blocks.{layer}.mlp.hook_pre"]
        w = m.W_gate(layer) if m.W_gate(layer) is not None else m.W_in(layer)
        b_in = getattr(m.adapter.mlp_part(layer, f.mlp_gate or f.mlp_in), "bias", None)
        torch.testing.assert_close(x2 @ w + (0 if b_in is None else b_in), pre)
        post = cache[f"blocks.{layer}.mlp.hook_post"]
        b_out = m.adapter.b_out(layer)
        mlp_out = post @ m.W_out(layer) + (0 if b_out is None else b_out)
        if f.mlp_post_norm is None:
            torch.testing.assert_close(mlp_out, cache[f"blocks.{layer}.hook_mlp_out"])
    assert m.W_E.shape == (m.cfg.d_vocab, m.cfg.d_model)
    assert m.W_U.data_ptr() == m.model.lm_head.weight.data_ptr()  # a view, not a copy


def _check_experts(m: HookedModel, cache, layer: int, x2: torch.Tensor) -> None:
    """MoE: router logits from its weight; each expert's weighted output recomputed one expert at a time from
    its own weights and the top-k routing; they (plus the gated shared expert) sum to hook_mlp_out."""
    f, c = m.adapter.family, m.cfg
    moe = m.adapter.mlp(layer)
    router = cache[f"blocks.{layer}.mlp.hook_router"]  # [batch, pos, n_experts]
    r = getattr(moe, f.router)
    torch.testing.assert_close(router, x2 @ r.weight.T + (0 if getattr(r, "bias", None) is None else r.bias))
    top, idx = route_by_hand(m, router)
    experts = cache[f"blocks.{layer}.mlp.hook_expert_out"]
    assert experts.shape == (*x2.shape[:2], c.n_experts, c.d_model)
    for e in range(c.n_experts):
        w = (top * (idx == e)).sum(-1, keepdim=True)  # 0 where expert e was not chosen
        torch.testing.assert_close(experts[:, :, e], expert_by_hand(m, layer, e, x2) * w)
    mixed = experts.sum(-2)
    if f.shared_expert:
        shared = cache[f"blocks.{layer}.mlp.hook_shared_expert"]
        mixed = mixed + torch.sigmoid(cache[f"blocks.{layer}.mlp.hook_shared_gate"]) * shared
    torch.testing.assert_close(mixed, cache[f"blocks.{layer}.hook_mlp_out"])


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe", "gpt_oss"])
def test_patching_an_expert_changes_the_mixed_output(kind):
    """Writing hook_expert_out moves hook_mlp_out by exactly the change; single-MLP techniques refuse."""
    m = tiny(kind)
    toks = tokens()
    name = "blocks.1.mlp.hook_expert_out"
    _, cache = m.run_with_cache(toks, names=[name, "blocks.1.hook_mlp_out"])

    def drop_first_chosen(v, hp):
        return v * (torch.arange(v.shape[-2]) != 0)[:, None]  # remove expert 0

    with m.hooks([(name, drop_first_chosen)]):
        _, patched = m.run_with_cache(toks, names=["blocks.1.hook_mlp_out"])
    torch.testing.assert_close(patched["blocks.1.hook_mlp_out"],
                               cache["blocks.1.hook_mlp_out"] - cache[name][:, :, 0], rtol=1e-5, atol=1e-5)
    assert bool(cache[name][:, :, 0].abs().sum() > 0)
    with pytest.raises(UncoverError, match=f"{m.cfg.family} has a mixture-of-experts MLP"):
        m.W_out(1)
    with pytest.raises(UncoverError, match="mixture-of-experts MLP: use mlp.hook_expert_out"):
        m.run_with_cache(toks, names=["blocks.1.mlp.hook_post"])


def test_float64_separates_rounding_from_bugs():
    """The same identity is ~1e-7 off in float32 and ~1e-15 in float64: rounding, not a bug."""
    errs = {}
    for dtype in (torch.float32, torch.float64):
        m = tiny("llama-gqa", dtype=dtype)
        _, cache = m.run_with_cache(tokens())
        heads = cache.head_results(1).sum(-2) + m.adapter.b_O(1)
        errs[dtype] = (heads - cache["blocks.1.hook_attn_out"]).abs().max().item()
    assert errs[torch.float64] < 1e-12 < errs[torch.float32] < 1e-5


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gemma3"])
def test_lazy_hook_result_equals_hooked_read(kind):
    """run_with_cache computes hook_result on access from hook_z; it must equal the value a hook sees."""
    m = tiny(kind)
    toks = tokens()
    seen = {}
    name = "blocks.1.attn.hook_result"
    with m.hooks([(name, lambda v, hp: seen.setdefault("v", v.clone()))]):
        m(toks)
    _, cache = m.run_with_cache(toks, names=[name])
    assert list(cache) == [name] and name in cache
    assert torch.equal(cache[name], seen["v"])
