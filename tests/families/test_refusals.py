"""Config options the newer adapters do not understand are refused in one line naming the option."""

from __future__ import annotations

import pytest
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
