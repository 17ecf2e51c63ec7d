"""Config options the newer adapters do not understand are refused in one line naming the option."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from tests.families.kinds import family_hf
from uncover import HookedModel
from uncover.core.errors import UnsupportedModel
from uncover.models.families import family_for

CASES = [
    ("opt", T.OPTConfig(do_layer_norm_before=False), "do_layer_norm_before=False"),
    ("opt", T.OPTConfig(word_embed_proj_dim=512, hidden_size=768), "word_embed_proj_dim=512"),
    ("qwen2_moe", T.Qwen2MoeConfig(decoder_sparse_step=2), "decoder_sparse_step=2"),
    ("qwen3_moe", T.Qwen3MoeConfig(mlp_only_layers=[0]), "mlp_only_layers=[0]"),
    ("bloom", T.BloomConfig(apply_residual_connection_post_layernorm=True), "apply_residual_connection_post_layernorm"),
]


@pytest.mark.parametrize("model_type,cfg,words", CASES)
def test_refused_options_are_named(model_type, cfg, words):
    problems = family_for(model_type).refuse(cfg)
    assert len(problems) == 1 and words in problems[0]


def test_default_configs_are_accepted():
    for t, c in [("opt", T.OPTConfig()), ("qwen2_moe", T.Qwen2MoeConfig()), ("bloom", T.BloomConfig()),
                 ("mixtral", T.MixtralConfig()), ("granite", T.GraniteConfig()), ("cohere", T.CohereConfig()),
                 ("olmo2", T.Olmo2Config())]:
        assert family_for(t).refuse(c) == [], t


def test_a_refused_model_says_so_when_wrapped():
    hf = family_hf("opt")
    hf.config.do_layer_norm_before = False
    with pytest.raises(UnsupportedModel, match="opt adapter does not support: do_layer_norm_before=False"):
        HookedModel(hf, tokenizer=None)


def test_gpt_oss_options_and_quantized_experts_are_refused():
    assert family_for("gpt_oss").refuse(T.GptOssConfig()) == []
    cfg = T.GptOssConfig(num_hidden_layers=2, layer_types=["sliding_attention", "chunked_attention"])
    assert family_for("gpt_oss").refuse(cfg) == ["layer_types ['chunked_attention'] (only sliding_attention, "
                                                 "full_attention)"]
    hf = family_hf("gpt_oss")
    for layer in hf.model.layers:  # what MXFP4 loading leaves without dequantize: packed uint8 blocks
        ex = layer.mlp.experts
        ex.gate_up_proj = torch.nn.Parameter(torch.zeros(ex.gate_up_proj.shape, dtype=torch.uint8),
                                             requires_grad=False)
    with pytest.raises(UnsupportedModel, match=r"gate_up_proj is torch.uint8, .*Mxfp4Config\(dequantize=True\)"):
        HookedModel(hf, tokenizer=None)
