"""The hook engine: scoped attachment, restoration, nesting, call order, generation."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.conftest import KINDS, V, tiny, tiny_hf, tokens
from uncover import Add, HookedModel, Mean, Replace, Zero
from uncover.core.errors import UnknownHookName
from uncover.hooks import attention

pytestmark = pytest.mark.usefixtures("one_thread_no_grad")


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
              "_forward_hooks_always_called", "_backward_hooks")


def leftovers(m: HookedModel) -> list[str]:
    """Every trace an attachment could leave behind on the model."""
    out = []
    for name, mod in m.model.named_modules():
        for d in HOOK_DICTS:
            if getattr(mod, d, None):
                out.append(f"{name}.{d}")
        for attr in ("_uncover_attn_entries", attention.ATTR):
            if hasattr(mod, attr):
                out.append(f"{name}.{attr}")
    for cfg in attention.configs_of(m.model, [m.adapter.attn(i) for i in range(m.cfg.n_layers)]):
        if str(cfg._attn_implementation).startswith(attention.PREFIX):
            out.append(f"config: {cfg._attn_implementation}")
    return out


def all_kinds_of_interventions(m: HookedModel) -> list:
    d = m.cfg.d_model
    out = [
        Add("hook_embed", vector=torch.ones(d)),
        Zero("blocks.0.attn.hook_z", heads=[1], positions=[-1]),
        Mean("blocks.0.hook_mlp_out"),
        Zero("blocks.1.attn.hook_pattern", heads=[0]),
        Add("blocks.1.attn.hook_attn_scores", vector=torch.zeros(6)),
        Zero("blocks.1.attn.hook_result", heads=[2]),
        Zero("blocks.1.attn.hook_v", heads=[0]),
        Zero("blocks.2.mlp.hook_post", positions=[0]),
        Replace("blocks.2.hook_resid_post", source=torch.zeros(d), positions=[1]),
    ]
    if not m.cfg.parallel_attn_mlp:
        out.append(Add("blocks.2.hook_resid_mid", vector=torch.ones(d)))
    return out


# ---- restoration ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_model_restored_after_block_and_after_exception(kind):
    m = tiny(kind)
    toks = tokens(2, 6)
    impl = m.model.config._attn_implementation
    before = m(toks)
    assert leftovers(m) == []
    with m.intervene(all_kinds_of_interventions(m)):
        assert leftovers(m)  # really attached
        assert m.model.config._attn_implementation == attention.PREFIX + impl
        during = m(toks)
    assert (during - before).abs().max() > 1e-3
    assert leftovers(m) == [] and m.model.config._attn_implementation == impl
    torch.testing.assert_close(m(toks), before, rtol=0, atol=0)

    with pytest.raises(RuntimeError, match="boom"):
        with m.intervene(all_kinds_of_interventions(m)):
            m(toks)
            raise RuntimeError("boom")
    assert leftovers(m) == [] and m.model.config._attn_implementation == impl
    torch.testing.assert_close(m(toks), before, rtol=0, atol=0)


def test_restored_when_a_hook_raises_mid_forward():
    m = tiny("llama")
    toks = tokens(2, 6)
    before = m(toks)

    def bad(v, hp):
        raise ValueError("hook failed")

    with pytest.raises(ValueError, match="hook failed"):
        with m.hooks([("blocks.0.attn.hook_pattern", lambda v, hp: v * 1), ("blocks.1.hook_resid_mid", bad)]):
            m(toks)
    assert leftovers(m) == []
    torch.testing.assert_close(m(toks), before, rtol=0, atol=0)


def test_nothing_attached_when_a_later_name_is_unknown():
    m = tiny("llama")
    with pytest.raises(UnknownHookName, match="did you mean"):
        with m.hooks([("blocks.0.attn.hook_pattern", lambda v, hp: None), ("blocks.0.hook_resid_pr", print)]):
            pass
    assert leftovers(m) == []


def test_wrong_shape_from_a_hook_is_refused_and_restored():
    m = tiny("llama")
    toks = tokens(2, 6)
    before = m(toks)
    for point in ("hook_resid_pre", "attn.hook_z", "attn.hook_result", "attn.hook_q", "attn.hook_pattern"):
        name = f"blocks.0.{point}"
        with pytest.raises((ValueError, RuntimeError)):
            with m.hooks([(name, lambda v, hp: v[..., :1].clone())]):
                m(toks)
        assert leftovers(m) == []
    torch.testing.assert_close(m(toks), before, rtol=0, atol=0)


def test_hooks_returning_none_or_value_change_nothing():
    m = tiny("gpt2")
    toks = tokens(2, 6)
    before = m(toks)
    names = m.hook_names()
    with m.hooks([(n, lambda v, hp: None) for n in names] + [(n, lambda v, hp: v) for n in names]):
        torch.testing.assert_close(m(toks), before, rtol=0, atol=0)


# ---- nesting --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gemma2"])
def test_nested_contexts_compose_like_one_list(kind):
    m = tiny(kind)
    toks = tokens(2, 6)
    d = m.cfg.d_model
    a = Add("blocks.1.hook_resid_pre", vector=torch.ones(d) * 0.5)
    b = Zero("blocks.1.attn.hook_pattern", heads=[0])
    c = Zero("blocks.1.hook_resid_pre", positions=[-1])  # same hook as a: applied after it
    p = Add("blocks.0.attn.hook_attn_scores", vector=torch.linspace(0, 1, 6))
    with m.intervene([a, b, c, p]):
        flat = m(toks)
    with m.intervene([a]), m.intervene([b]):
        with m.intervene([c]):
            with m.intervene([p]):
                nested = m(toks)
            # inner pattern context left: the outer one still applies
            with m.intervene([p]):
                again = m(toks)
        with m.intervene([c, p]):
            torch.testing.assert_close(m(toks), flat, rtol=0, atol=0)
        # after c and p left, only a and b remain
        with m.intervene([a, b]):
            pass
        only_ab = m(toks)
    with m.intervene([a, b]):
        torch.testing.assert_close(only_ab, m(toks), rtol=0, atol=0)
    torch.testing.assert_close(nested, flat, rtol=0, atol=0)
    torch.testing.assert_close(again, flat, rtol=0, atol=0)
    assert leftovers(m) == []


def test_resid_mid_sees_resid_pre_changes_made_by_an_inner_context():
    """resid_mid = the residual the MLP reads (the input of ln2), whatever order the
    contexts that change resid_pre and read resid_mid were entered in."""
    m = tiny("llama")
    toks = tokens(2, 6)
    seen = {}
    ln2 = m.norm(1, "ln2")
    h = ln2.register_forward_pre_hook(lambda mod, args: seen.__setitem__("ln2", args[0].clone()))
    try:
        with m.hooks([("blocks.1.hook_resid_mid", lambda v, hp: seen.__setitem__("mid", v.clone()))]):
            with m.intervene([Add("blocks.1.hook_resid_pre", vector=torch.ones(m.cfg.d_model) * 3)]):
                m(toks)
        torch.testing.assert_close(seen["mid"], seen["ln2"], rtol=0, atol=0)
        # and the write path: replacing resid_mid in an outer context wins over an inner resid_pre change
        target = torch.randn(2, 6, m.cfg.d_model)
        with m.intervene([Replace("blocks.1.hook_resid_mid", source=target)]):
            with m.intervene([Add("blocks.1.hook_resid_pre", vector=torch.ones(m.cfg.d_model) * 3)]):
                m(toks)
        torch.testing.assert_close(seen["ln2"], target, rtol=1e-5, atol=1e-5)
    finally:
        h.remove()


def test_run_with_cache_inside_intervene_sees_the_change():
    m = tiny("llama")
    toks = tokens(2, 6)
    with m.intervene([Zero("blocks.0.attn.hook_z", heads=[1])]):
        logits, cache = m.run_with_cache(toks, names=["blocks.0.attn.hook_z", "blocks.0.attn.hook_result"])
        direct = m(toks)
    torch.testing.assert_close(logits, direct, rtol=0, atol=0)
    assert cache["blocks.0.attn.hook_z"][:, :, 1].abs().max() == 0
    assert cache["blocks.0.attn.hook_result"][:, :, 1].abs().max() == 0
    assert cache["blocks.0.attn.hook_z"][:, :, 0].abs().max() > 0


# ---- call order and hook points ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_hook_names_are_in_forward_order(kind):
    m = tiny(kind)
    seen: list[str] = []

    def rec(name):
        def fn(v, hp):
            assert hp.name == name
            if name not in seen:
                seen.append(name)

        return fn

    names = m.hook_names()
    with m.hooks([(n, rec(n)) for n in names]):
        m(tokens(1, 5))
    assert sorted(seen) == sorted(names), set(names) ^ set(seen)

    def canon(ns):  # q, k, v come from separate projections whose call order varies by family
        return [n.replace("hook_k", "hook_q").replace("hook_v", "hook_q") for n in ns]

    assert canon(seen) == canon(names)


def test_hook_point_knows_layer_and_state():
    m = tiny("llama")
    toks = tokens(3, 5)
    got = {}

    def fn(v, hp):
        got[hp.name] = (hp.layer, hp.state.batch, hp.state.q_len, hp.state.offset)

    with m.hooks([("blocks.2.attn.hook_z", fn), ("hook_embed", fn), ("logits", fn)]):
        m(toks)
    assert got == {"blocks.2.attn.hook_z": (2, 3, 5, 0), "hook_embed": (None, 3, 5, 0), "logits": (None, 3, 5, 0)}


def test_hook_values_have_documented_shapes():
    m = tiny("llama-gqa")
    c = m.cfg
    _, cache = m.run_with_cache(tokens(2, 5))
    b, p = 2, 5
    expect = {
        "hook_embed": (b, p, c.d_model),
        "blocks.0.hook_resid_pre": (b, p, c.d_model),
        "blocks.0.attn.hook_q": (b, p, c.n_heads, c.d_head),
        "blocks.0.attn.hook_k": (b, p, c.n_kv_heads, c.d_head),
        "blocks.0.attn.hook_v": (b, p, c.n_kv_heads, c.d_head),
        "blocks.0.attn.hook_attn_scores": (b, c.n_heads, p, p),
        "blocks.0.attn.hook_pattern": (b, c.n_heads, p, p),
        "blocks.0.attn.hook_z": (b, p, c.n_heads, c.d_head),
        "blocks.0.attn.hook_result": (b, p, c.n_heads, c.d_model),
        "blocks.0.mlp.hook_pre": (b, p, c.d_mlp),
        "blocks.0.mlp.hook_pre_linear": (b, p, c.d_mlp),
        "blocks.0.mlp.hook_post": (b, p, c.d_mlp),
        "ln_final.hook_normalized": (b, p, c.d_model),
        "logits": (b, p, c.d_vocab),
    }
    for n, shape in expect.items():
        assert tuple(cache[n].shape) == shape, n


def test_pattern_hooks_work_with_eager_and_sdpa_alike():
    toks = tokens(2, 6)
    out = {}
    for impl in ("eager", "sdpa"):
        m = HookedModel(tiny_hf("llama", attn=impl), tokenizer=None)
        with m.intervene([Zero("blocks.1.attn.hook_pattern", heads=[2])]):
            out[impl] = m(toks)
        assert m.model.config._attn_implementation == impl
    torch.testing.assert_close(out["eager"], out["sdpa"], rtol=1e-5, atol=1e-5)


# ---- generation -----------------------------------------------------------------------------------
def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny vocabulary: ``w3 .. w63`` (offline, no files)."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, V)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="module")
def gen_model() -> HookedModel:
    hf = tiny_hf("llama")
    hf.generation_config.eos_token_id = None  # random weights: never stop early
    hf.generation_config.bos_token_id = None
    return HookedModel(hf, word_tokenizer(), name="tiny-llama-words")


def test_tokenizer_fixture_round_trips(gen_model):
    assert gen_model.to_tokens("w5 w9 w63").tolist() == [[5, 9, 63]]
    assert gen_model.to_str_tokens("w5 w9") == ["w5", "w9"]


def test_generate_refuses_token_counts_it_cannot_produce(gen_model):
    from uncover.core.errors import UncoverError

    room = gen_model.model.config.max_position_embeddings
    for bad in (0, -1, 2.5, True, room):
        with pytest.raises(UncoverError, match="max_new_tokens"):
            gen_model.generate("w5 w17", max_new_tokens=bad)


def test_generate_under_intervention_differs_and_is_restored(gen_model):
    m = gen_model
    prompt = "w5 w17 w33 w40"
    before = m.generate(prompt, max_new_tokens=8)
    assert isinstance(before, str) and len(before.split()) == 8
    vec = torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 20
    with m.intervene([Add("blocks.1.hook_resid_pre", vector=vec)]):
        steered = m.generate(prompt, max_new_tokens=8)
    assert steered != before
    assert m.generate(prompt, max_new_tokens=8) == before
    assert leftovers(m) == []


def test_hooks_run_on_every_generation_step(gen_model):
    m = gen_model
    calls = []

    def fn(v, hp):
        calls.append((tuple(v.shape), hp.state.offset, hp.state.columns([-1, 0], v.device).tolist()))

    with m.hooks([("blocks.0.hook_resid_pre", fn)]):
        m.generate(["w5 w6 w7 w8", "w9 w10"], max_new_tokens=4)
    assert len(calls) == 4  # prefill + 3 decoding steps
    # prefill: left padded, -1 is the last column of both rows, 0 the first real token
    assert calls[0] == ((2, 4, m.cfg.d_model), 0, [[3, 0], [3, 2]])
    for step, (shape, offset, cols) in enumerate(calls[1:], start=1):
        assert shape == (2, 1, m.cfg.d_model) and offset == 3 + step
        assert cols == [[0, -1], [0, -1]]  # the new token is the last; the first is in the past


def test_generate_with_position_intervention_only_changes_from_there(gen_model):
    """An Add at position 0 (the first prompt token) changes the continuation the same way in a
    left-padded batch as alone."""
    m = gen_model
    vec = torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(1)) * 20
    prompts = ["w5 w6 w7 w8", "w9 w10"]
    with m.intervene([Add("blocks.0.hook_resid_pre", vector=vec, positions=[0])]):
        batched = m.generate(prompts, max_new_tokens=5)
        alone = [m.generate(p, max_new_tokens=5) for p in prompts]
    assert batched == alone
    assert batched != m.generate(prompts, max_new_tokens=5)


def test_pattern_hooks_during_generation_with_a_kv_cache(gen_model):
    """Decoding steps see one query against the cached keys; rewriting the pattern there (the
    'changed' path) must reproduce plain generation, and zeroing it must change it."""
    m = gen_model
    prompts = ["w5 w6 w7 w8", "w9 w10"]
    plain = m.generate(prompts, max_new_tokens=5)
    shapes = []

    def same(v, hp):
        shapes.append(tuple(v.shape))
        return v.clone()

    with m.hooks([(f"blocks.{i}.attn.hook_pattern", same) for i in range(m.cfg.n_layers)]):
        assert m.generate(prompts, max_new_tokens=5) == plain
    assert shapes[0] == (2, m.cfg.n_heads, 4, 4) and shapes[-1] == (2, m.cfg.n_heads, 1, 8)
    with m.intervene([Zero(f"blocks.{i}.attn.hook_pattern") for i in range(m.cfg.n_layers)]):
        assert m.generate(prompts, max_new_tokens=5) != plain
