"""Hook-name vocabulary, "did you mean" errors and refusal of unsupported models."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from tests.conftest import KINDS, tiny, tiny_config, tiny_hf, tokens
from uncover import HookedModel
from uncover.core.errors import UncoverError, UnknownHookName, UnsupportedModel, close_matches, did_you_mean
from uncover.core.names import HookName, act_name, block_points, resid_name
from uncover.models.families import supported_model_types


# ---- parsing ----------------------------------------------------------------------------------
def test_parse_and_str_round_trip():
    names = ("hook_embed", "logits", "ln_final.hook_normalized", "blocks.12.attn.hook_z", "blocks.0.hook_resid_pre")
    for name in names:
        assert str(HookName.parse(name)) == name
    h = HookName.parse("blocks.3.mlp.hook_post")
    assert (h.layer, h.point, h.leaf, h.per_head) == (3, "mlp.hook_post", "hook_post", False)
    assert HookName.parse("blocks.1.attn.hook_pattern").per_head
    assert not HookName.parse("blocks.1.attn.hook_pattern_x").per_head
    assert not HookName.parse("blocks.1.hook_attn_out").per_head
    assert HookName.parse("hook_embed").layer is None


def test_shorthands():
    assert act_name("z", 3) == "blocks.3.attn.hook_z"
    assert act_name("resid_mid", 0) == "blocks.0.hook_resid_mid"
    assert act_name("pre_linear", 2) == "blocks.2.mlp.hook_pre_linear"
    assert act_name("embed") == "hook_embed" and act_name("logits") == "logits"
    assert resid_name(4) == "blocks.4.hook_resid_pre"
    for p in block_points():  # every shorthand lands on a real point
        assert act_name(p.rsplit("hook_", 1)[1], 1) == f"blocks.1.{p}" or "normalized" in p


# ---- per model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_hook_names_cover_every_point_once(kind):
    m = tiny(kind)
    names = m.hook_names()
    assert len(names) == len(set(names))
    assert names[0] == "hook_embed" and names[-2:] == ["ln_final.hook_normalized", "logits"]
    per_block = len(block_points()) - m.cfg.parallel_attn_mlp - (not m.cfg.gated_mlp)
    n_global = 3 + (m.adapter.family.pos_embed is not None)
    assert len(names) == n_global + m.cfg.n_layers * per_block
    for layer in range(m.cfg.n_layers):
        block = [n for n in names if n.startswith(f"blocks.{layer}.")]
        assert block[0].endswith("hook_resid_pre") and block[-1].endswith("hook_resid_post")
    assert ("hook_pos_embed" in names) == (kind == "gpt2")
    for n in names:
        m.site(n)  # every listed name resolves
    assert m.hook_names() is not m.hook_names()  # a copy: callers cannot corrupt it


@pytest.mark.parametrize("kind", KINDS)
def test_resid_mid_and_pre_linear_exist_only_where_they_mean_something(kind):
    m = tiny(kind)
    names = set(m.hook_names())
    assert ("blocks.0.hook_resid_mid" in names) == (kind != "gpt_neox")
    gated = kind not in ("gpt2", "gpt_neox", "gpt_neox-seq")
    assert m.cfg.gated_mlp == gated
    assert ("blocks.0.mlp.hook_pre_linear" in names) == gated


def test_resid_mid_on_parallel_neox_explains():
    m = tiny("gpt_neox")
    assert m.cfg.parallel_attn_mlp
    with pytest.raises(UnknownHookName, match="parallel") as e:
        m.site("blocks.1.hook_resid_mid")
    assert "hook_attn_out" in str(e.value)
    with pytest.raises(UnknownHookName):
        with m.hooks([("blocks.1.hook_resid_mid", lambda v, hp: None)]):
            pass
    assert not tiny("gpt_neox-seq").cfg.parallel_attn_mlp


def test_pre_linear_on_ungated_mlp_explains():
    with pytest.raises(UnknownHookName, match="gated"):
        tiny("gpt2").site("blocks.0.mlp.hook_pre_linear")


def test_gated_mlp_pre_and_pre_linear_are_gate_and_up():
    m = tiny("llama", dtype=torch.float64)
    _, cache = m.run_with_cache(tokens(1, 4), names=lambda n: n.startswith("blocks.0.mlp") or "ln2" in n)
    x = cache["blocks.0.ln2.hook_normalized"]
    torch.testing.assert_close(cache["blocks.0.mlp.hook_pre"], x @ m.W_gate(0))
    torch.testing.assert_close(cache["blocks.0.mlp.hook_pre_linear"], x @ m.W_in(0))
    act = torch.nn.functional.silu(cache["blocks.0.mlp.hook_pre"]) * cache["blocks.0.mlp.hook_pre_linear"]
    torch.testing.assert_close(cache["blocks.0.mlp.hook_post"], act)


@pytest.mark.parametrize(
    "bad,close",
    [
        ("blocks.0.hook_resid_pr", "blocks.0.hook_resid_pre"),
        ("blocks.1.attn.hook_patern", "blocks.1.attn.hook_pattern"),
        ("blocks.2.hook_mlp_outt", "blocks.2.hook_mlp_out"),
        ("hook_embd", "hook_embed"),
        ("ln_final.hook_norm", "ln_final.hook_normalized"),
        ("blocks.9.hook_resid_pre", "blocks.2.hook_resid_pre"),
    ],
)
def test_unknown_names_suggest_close_ones(bad, close):
    m = tiny("llama")
    with pytest.raises(UnknownHookName) as e:
        m.site(bad)
    msg = str(e.value)
    assert "did you mean" in msg and close in msg and repr(bad) in msg
    assert not msg.startswith('"')  # not KeyError's quoting
    assert isinstance(e.value, KeyError) and isinstance(e.value, UncoverError)
    with pytest.raises(UnknownHookName):
        m.run_with_cache(tokens(1, 3), names=[bad])
    with pytest.raises(UnknownHookName):
        with m.hooks([(bad, lambda v, hp: None)]):
            pass


def test_out_of_range_layer_and_odd_spellings_are_refused():
    m = tiny("llama")
    with pytest.raises(UnknownHookName, match=r"0\.\.2"):
        m.site("blocks.3.hook_resid_pre")
    for odd in ("blocks.01.hook_resid_pre", "blocks.-1.hook_resid_pre", "blocks.0.attn.hook_z.x", ""):
        with pytest.raises(UnknownHookName):
            m.site(odd)


def test_select_names():
    m = tiny("llama")
    assert m.select_names(None) == m.hook_names()
    assert m.select_names("blocks.0.attn.hook_z") == ["blocks.0.attn.hook_z"]
    z = m.select_names(lambda n: n.endswith("hook_z"))
    assert z == [f"blocks.{i}.attn.hook_z" for i in range(m.cfg.n_layers)]


def test_error_helpers():
    assert close_matches("hook_embd", ["hook_embed", "logits"]) == ["hook_embed"]
    msg = did_you_mean("zzz", [f"n{i}" for i in range(20)], "thing")
    assert msg.startswith("unknown thing 'zzz'; valid choices: n0, n1") and msg.endswith("...")
    assert str(UnknownHookName("plain message")) == "plain message"


# ---- unsupported models ---------------------------------------------------------------------------
def _bert():
    cfg = T.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, is_decoder=True)
    return T.BertLMHeadModel(cfg)


def _t5():
    cfg = T.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    return T.T5ForConditionalGeneration(cfg)


@pytest.mark.parametrize("build", [_bert, _t5])
def test_unsupported_architecture_names_supported_types(build):
    with pytest.raises(UnsupportedModel) as e:
        HookedModel(build(), tokenizer=None)
    msg = str(e.value)
    for t in ("llama", "gpt2", "gpt_neox", "gemma2", "qwen3"):
        assert t in msg
    assert set(supported_model_types()) >= {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"}


def test_llama_pretraining_tp_is_refused():
    cfg = tiny_config("llama")
    cfg.pretraining_tp = 2
    with pytest.raises(UnsupportedModel, match="pretraining_tp"):
        HookedModel(T.AutoModelForCausalLM.from_config(cfg), tokenizer=None)


def test_refusal_is_not_triggered_by_supported_configs():
    for kind in KINDS:
        HookedModel(tiny_hf(kind), tokenizer=None)
