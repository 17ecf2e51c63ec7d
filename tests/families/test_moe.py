"""Mixture-of-experts routing written through ``mlp.hook_router``, and gpt-oss's attention sinks under writes.

A write to the router logits must change the expert choice and weights exactly as if the router had produced
those logits; a no-op write (even one returning a fresh tensor) must leave everything bit-identical.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tokens
from tests.families.kinds import family_hf, family_model
from tests.families.moe_ref import expert_by_hand, route_by_hand
from uncover.hooks.interventions import Add

MOE = ["mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss"]
LAYER = 1
ROUTER, EXPERTS = f"blocks.{LAYER}.mlp.hook_router", f"blocks.{LAYER}.mlp.hook_expert_out"
X2, OUT = f"blocks.{LAYER}.ln2.hook_normalized", f"blocks.{LAYER}.hook_mlp_out"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.mark.parametrize("kind", MOE)
def test_route_is_the_routers_own_computation(kind):
    """``Adapter.route`` on the router's logits gives back its weights and choice bit for bit."""
    m = family_model(kind)
    seen = []
    router = getattr(m.adapter.mlp(LAYER), m.adapter.family.router)
    h = router.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        with torch.no_grad():
            m(tokens())
    finally:
        h.remove()
    logits, weights, index = seen[0]
    w, i = m.adapter.route(LAYER, logits)
    assert torch.equal(i, index) and torch.equal(w, weights) and w.dtype == weights.dtype


@pytest.mark.parametrize("kind", MOE)
def test_a_noop_router_write_is_bit_identical(kind):
    """Returning a copy of the logits takes the re-routing path; the run must not change by one bit."""
    m = family_model(kind)
    toks = tokens()
    with torch.no_grad():
        plain = m(toks)
        with m.hooks([(f"blocks.{i}.mlp.hook_router", lambda v, hp: v.clone()) for i in range(m.cfg.n_layers)]):
            rerouted = m(toks)
    assert torch.equal(plain, rerouted)


@pytest.mark.parametrize("kind", MOE)
def test_a_large_router_bias_routes_every_token_to_that_expert(kind):
    m = family_model(kind)
    toks = tokens()
    with torch.no_grad():
        _, clean = m.run_with_cache(toks, names=[ROUTER, EXPERTS])
        chosen = (clean[EXPERTS].abs().sum(-1) > 0).sum((0, 1))  # tokens per expert
        e = int(chosen.argmin())  # the expert the router likes least
        assert int(chosen[e]) < toks.numel()
        bias = torch.zeros(m.cfg.n_experts)
        bias[e] = 50.0
        with m.intervene([Add(ROUTER, vector=bias)]):
            _, cache = m.run_with_cache(toks, names=[ROUTER, EXPERTS, X2, OUT])
    assert bool((cache[EXPERTS][:, :, e].abs().sum(-1) > 0).all()), "the biased expert is not chosen everywhere"
    torch.testing.assert_close(cache[ROUTER], clean[ROUTER] + bias)  # the hook sees the written logits downstream
    # the mixed output computed by hand from the written logits, expert by expert
    x2 = cache[X2]
    top, idx = route_by_hand(m, cache[ROUTER])
    ref = sum((top * (idx == j)).sum(-1, keepdim=True) * expert_by_hand(m, LAYER, j, x2)
              for j in range(m.cfg.n_experts))
    if m.adapter.family.shared_expert:  # Qwen2-MoE's shared expert does not depend on the routing
        mlp = m.adapter.mlp(LAYER)
        ref = ref + torch.sigmoid(mlp.shared_expert_gate(x2)) * mlp.shared_expert(x2)
    torch.testing.assert_close(cache[OUT], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", MOE)
def test_permuted_logits_equal_a_router_with_permuted_weights(kind):
    """A write equals the model whose router produced those logits: swapping experts' logits through the hook is
    the same model as swapping the rows of the router's weight (and bias)."""
    m = family_model(kind)
    toks = tokens()
    perm = torch.arange(m.cfg.n_experts).roll(1)
    with torch.no_grad():
        plain = m(toks)
        with m.hooks([(ROUTER, lambda v, hp: v[..., perm])]):
            written = m(toks)
        router = getattr(m.adapter.mlp(LAYER), m.adapter.family.router)
        params = [p for p in (router.weight, getattr(router, "bias", None)) if p is not None]
        saved = [p.clone() for p in params]
        for p in params:
            p.copy_(p[perm])
        try:
            reference = m(toks)
        finally:
            for p, s in zip(params, saved):
                p.copy_(s)
    assert not torch.allclose(written, plain, atol=1e-4)
    torch.testing.assert_close(written, reference, rtol=1e-5, atol=1e-6)


def test_gpt_oss_router_bias_write_equals_a_biased_router():
    m = family_model("gpt_oss")
    toks = tokens()
    bias = torch.zeros(m.cfg.n_experts)
    bias[2] = 3.0
    with torch.no_grad():
        with m.intervene([Add(ROUTER, vector=bias)]):
            written = m(toks)
        router = m.adapter.mlp(LAYER).router
        router.bias[2] += 3.0
        try:
            reference = m(toks)
        finally:
            router.bias[2] -= 3.0
    torch.testing.assert_close(written, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["gpt_oss", "gpt_oss-mha"])
def test_gpt_oss_writes_keep_the_attention_sink(kind):
    """Writing scores or pattern recomputes the output from them; a same-valued write must give the model's own
    output, which it only does when the sink stays in the softmax (without it every output would be larger)."""
    m = family_model(kind)
    toks = tokens()
    with torch.no_grad():
        plain = m(toks)
        for point in ("attn.hook_attn_scores", "attn.hook_pattern"):
            with m.hooks([(f"blocks.{i}.{point}", lambda v, hp: v.clone()) for i in range(m.cfg.n_layers)]):
                torch.testing.assert_close(m(toks), plain, rtol=1e-5, atol=1e-5)
        # and the written path really uses the written pattern: zeroing one head changes the output
        drop_head0 = lambda v, hp: v * (torch.arange(v.shape[1]) != 0)[:, None, None]  # noqa: E731
        with m.hooks([("blocks.0.attn.hook_pattern", drop_head0)]):
            assert not torch.allclose(m(toks), plain, atol=1e-4)


@pytest.mark.parametrize("kind", ["gpt_oss-mha"])
def test_gpt_oss_mha_matches_the_plain_model(kind):
    """The multi-head variant through the parity checks that matter for sinks: no-op hooks, patterns vs eager."""
    m = family_model(kind)
    toks = tokens()
    with torch.no_grad():
        plain = m.model(toks).logits
        with m.hooks([(n, lambda v, hp: v) for n in m.hook_names()]):
            assert torch.equal(m(toks), plain)
        _, cache = m.run_with_cache(toks, names=lambda n: "hook_pattern" in n)
        ref = family_hf(kind, attn="eager")(toks, output_attentions=True).attentions
    for layer in range(m.cfg.n_layers):
        torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_pattern"], ref[layer], rtol=1e-5, atol=1e-6)
