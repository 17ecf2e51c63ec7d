"""ActivationCache recipes: derived values computed on first access are bit-identical to eager ones.

``run_with_cache`` keeps ``hook_resid_mid`` (``resid_pre + attn_out``), attention scores and patterns
(from the post-rotary q and k) and ``mlp.hook_post`` (``act(hook_pre) [* hook_pre_linear]``, once checked
against the model) as recipes when that holds no more memory (``hooks/cache.py``). Each test compares
against the value a plain hook function sees in the same forward pass, which is always computed eagerly.
"""

from __future__ import annotations

import gc
import types
import weakref

import pytest
import torch

from tests.conftest import tokens
from tests.families.kinds import ALL_KINDS
from tests.families.kinds import family_model as tiny
from uncover import HookedModel, Zero
from uncover.core.errors import UncoverError
from uncover.hooks.tokens import Batch

LAZY_POINTS = ("hook_resid_mid", "attn.hook_attn_scores", "attn.hook_pattern")


def _eager(m: HookedModel, inputs, names: list[str]) -> dict[str, torch.Tensor]:
    """Every value of ``names`` as a plain hook function sees it (a clone, taken during the forward)."""
    seen: dict[str, torch.Tensor] = {}

    def grab(name: str):
        def fn(v: torch.Tensor, hp) -> None:
            seen[name] = v.detach().clone()

        return fn

    with torch.no_grad(), m.hooks([(n, grab(n)) for n in names if n != "logits"]):
        seen["logits"] = m(inputs)
    return seen


def _padded(m: HookedModel) -> Batch:
    """Two rows of 16 tokens (longer than d_head, so scores outweigh q and k), the second right-padded by
    three: a real attention mask reaches attention."""
    ids = tokens(2, 16)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    return Batch(ids, mask)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_hook_cache_equals_eager_values_bit_for_bit(kind, one_thread):
    """GQA, soft-capped Gemma 2, sliding windows (Mistral, Gemma 2/3, gpt-oss), sinks, padding: all exact."""
    m = tiny(kind)
    batch = _padded(m)
    names = [n for n in m.hook_names() if not n.endswith("attn.hook_result")]
    eager = _eager(m, batch, names)
    for call in range(2):  # the first call checks the neuron formula against the model, the second uses it
        _, cache = m.run_with_cache(batch)
        deferred = set(cache.pending)
        expect_lazy = [n for n in names if n.endswith(LAZY_POINTS) and not m.adapter.family.pattern_at]
        if m.adapter.residual_multiplier == 1.0 and not m.cfg.n_experts:
            assert set(expect_lazy) <= deferred, sorted(set(expect_lazy) - deferred)
        if call and not m.cfg.n_experts:  # every dense family: act(hook_pre) [* hook_pre_linear] holds exactly
            assert {n for n in names if n.endswith("mlp.hook_post")} <= deferred
        assert list(cache) == m.hook_names()  # forward order, recipes included
        assert len(cache) == len(m.hook_names())
        for n in names:
            assert n in cache
            assert torch.equal(cache[n], eager[n]), (call, n)
        assert not {n for n in cache.pending if not n.endswith("attn.hook_result")}


def test_recipe_is_taken_only_when_it_holds_no_more_memory(one_thread):
    m = tiny("llama")
    short, long = tokens(2, 8), tokens(2, 64)
    pattern = "blocks.1.attn.hook_pattern"
    # 8 tokens: q and k (2 x [2, 4, 8, 8]) are bigger than the pattern [2, 4, 8, 8]: computed now
    _, cache = m.run_with_cache(short, names=[pattern])
    assert pattern in cache.store
    # 64 tokens: the pattern [2, 4, 64, 64] is bigger than q and k [2, 4, 64, 8]: a recipe
    _, cache = m.run_with_cache(long, names=[pattern])
    assert pattern in cache.pending
    assert torch.equal(cache[pattern], _eager(m, long, [pattern])[pattern])
    # resid_mid alone would keep resid_pre and attn_out alive: computed now; with them cached, a recipe
    mid = "blocks.1.hook_resid_mid"
    _, cache = m.run_with_cache(short, names=[mid])
    assert mid in cache.store
    _, cache = m.run_with_cache(short, names=[mid, "blocks.1.hook_resid_pre", "blocks.1.hook_attn_out"])
    assert mid in cache.pending


def test_a_writing_hook_gets_eager_values_and_the_cache_sees_the_change(one_thread):
    m = tiny("llama-gqa")
    toks = tokens()
    pattern, scores = "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_attn_scores"
    with m.intervene([Zero(pattern, heads=[0])]):
        _, cache = m.run_with_cache(toks, names=[pattern, scores])
    assert pattern in cache.store and scores in cache.store
    assert bool((cache[pattern][:, 0] == 0).all()) and bool((cache[pattern][:, 1] != 0).any())


def test_reading_materialises_a_layer_once_and_frees_the_recipe(one_thread):
    m = tiny("llama")
    _, cache = m.run_with_cache(tokens(2, 64))
    pattern, scores = "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_attn_scores"
    lazy = cache.pending[pattern]
    assert cache.pending[scores] is lazy  # one recipe gives both
    ref = weakref.ref(lazy)
    del lazy
    p = cache[pattern]
    assert pattern not in cache.pending and scores not in cache.pending  # filled together
    gc.collect()
    assert ref() is None  # nothing keeps q and k alive any more
    assert torch.equal(torch.softmax(cache[scores], -1), p)
    full = dict(cache)  # Mapping semantics materialise every name
    assert len(full) == len(m.hook_names()) and not cache.pending


def test_editing_a_cached_input_in_place_refuses_its_derived_values(one_thread):
    m = tiny("llama")
    _, cache = m.run_with_cache(tokens())
    mid = "blocks.1.hook_resid_mid"
    assert mid in cache.pending
    cache["blocks.1.hook_attn_out"].mul_(2)
    with pytest.raises(UncoverError, match="modified in place"):
        cache[mid]
    cache["blocks.0.attn.hook_z"].zero_()
    with pytest.raises(UncoverError, match="modified in place"):
        cache["blocks.0.attn.hook_result"]


def test_recipes_are_exact_whatever_the_thread_count_at_access(real):
    """The embedded model, read back on one thread after a two-thread forward: still bit-identical."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # more tokens than d_head (64), so that scores and patterns are kept as recipes; padded second row
        ids = real.tokenize([" ".join(["The Eiffel Tower is in the city of Paris, the capital of France."] * 8),
                             " ".join(["Bees carry pollen from one flower to another."] * 8)])
        names = [n for n in real.hook_names() if n.endswith(LAZY_POINTS) and n.startswith(("blocks.0.", "blocks.29"))]
        eager = _eager(real, ids, names)
        _, cache = real.run_with_cache(ids)
        torch.set_num_threads(1)
        assert set(names) <= set(cache.pending)
        for n in names:
            assert torch.equal(cache[n], eager[n]), n
    finally:
        torch.set_num_threads(threads)


def test_neuron_formula_is_used_only_where_it_reproduced_the_model(one_thread):
    m = tiny("llama")
    mlp = m.adapter.mlp(1)

    def scaled(self, x):  # an MLP whose neurons are not act(gate) * up
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x) * 1.5)

    mlp.forward = types.MethodType(scaled, mlp)
    toks = tokens(2, 16)
    eager = _eager(m, toks, m.hook_names())
    for _ in range(2):
        _, cache = m.run_with_cache(toks)
        assert "blocks.0.mlp.hook_post" in cache.pending or _ == 0
        assert "blocks.1.mlp.hook_post" in cache.store  # checked once, refused since
        for layer in range(m.cfg.n_layers):
            name = f"blocks.{layer}.mlp.hook_post"
            assert torch.equal(cache[name], eager[name])


def test_a_hook_on_the_neurons_keeps_them_eager(one_thread):
    m = tiny("llama")
    toks = tokens()
    m.run_with_cache(toks)  # formula checked
    with m.intervene([Zero("blocks.1.mlp.hook_post", positions=[0])]):
        _, cache = m.run_with_cache(toks)
    assert "blocks.1.mlp.hook_post" in cache.store and "blocks.0.mlp.hook_post" in cache.pending
    assert bool((cache["blocks.1.mlp.hook_post"][:, 0] == 0).all())


def test_recipes_work_under_inference_mode(one_thread):
    """Inference tensors have no in-place counter: recipes still compute (without that check)."""
    m = tiny("llama-gqa")
    toks = tokens(2, 16)
    eager = _eager(m, toks, m.hook_names())
    with torch.inference_mode():
        _, cache = m.run_with_cache(toks)
        assert cache.pending
        for n, v in eager.items():
            assert torch.equal(cache[n], v), n
