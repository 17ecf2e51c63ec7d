"""Tiny random configs of every supported family, with realistic scales, and a word-level tokenizer.

``tests/conftest.py`` builds the families the parity gate has always covered; this module adds the
newer ones and gives every model realistic scales: norm weights spread around 1 (``exp(0.5 z)``, so a
norm handled as if its weight were 1 shows), biases away from 0, Gemma's √d_model embedding
multiplier and post-norms where the family has them.
"""

from __future__ import annotations

import torch
import transformers as T

from tests.conftest import KINDS, D, F, H, L, V, tiny_config, word_level_tokenizer
from uncover import HookedModel

COMMON = dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H)

NEW_KINDS = ["smollm3", "phi", "phi3", "olmo", "stablelm", "starcoder2", "gptj", "gpt_bigcode", "gpt_bigcode-mha",
             "falcon", "glm4", "opt", "mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss", "olmo2", "cohere",
             "cohere-qk", "granite", "bloom"]
ALL_KINDS = KINDS + NEW_KINDS


def new_config(kind: str) -> T.PretrainedConfig:
    """Tiny config of a family added after the original parity gate."""
    if kind == "smollm3":
        return T.SmolLM3Config(**COMMON, num_key_value_heads=2, no_rope_layers=[1, 0, 1])
    if kind == "phi":
        return T.PhiConfig(**COMMON, partial_rotary_factor=0.5, resid_pdrop=0.0, embd_pdrop=0.0)
    if kind == "phi3":
        return T.Phi3Config(**COMMON, num_key_value_heads=2, pad_token_id=0, resid_pdrop=0.0)
    if kind == "olmo":
        return T.OlmoConfig(**COMMON, pad_token_id=0)
    if kind == "stablelm":
        return T.StableLmConfig(**COMMON, num_key_value_heads=2, use_qkv_bias=True)
    if kind == "starcoder2":
        return T.Starcoder2Config(**COMMON, num_key_value_heads=2, residual_dropout=0.0, embedding_dropout=0.0)
    if kind == "gptj":
        return T.GPTJConfig(vocab_size=V, n_embd=D, n_layer=L, n_head=H, rotary_dim=4, n_positions=160,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if kind in ("gpt_bigcode", "gpt_bigcode-mha"):
        return T.GPTBigCodeConfig(vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_positions=160,
                                  multi_query=kind == "gpt_bigcode", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if kind == "falcon":
        return T.FalconConfig(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, bias=True)
    if kind == "glm4":
        return T.Glm4Config(**COMMON, num_key_value_heads=2, pad_token_id=0, head_dim=8)
    moe = dict(COMMON, num_key_value_heads=2, num_experts_per_tok=2, router_jitter_noise=0.0,
               experts_implementation="eager")  # grouped_mm has no float64
    if kind == "mixtral":
        return T.MixtralConfig(**moe, num_local_experts=4)
    if kind == "qwen2_moe":
        return T.Qwen2MoeConfig(**moe, num_experts=4, moe_intermediate_size=24, shared_expert_intermediate_size=40,
                                norm_topk_prob=False)
    if kind == "qwen3_moe":
        return T.Qwen3MoeConfig(**moe, num_experts=4, moe_intermediate_size=24, head_dim=8, norm_topk_prob=True)
    if kind in ("gpt_oss", "gpt_oss-mha"):  # sliding and full layers alternate (window 4 of the 8-token prompts);
        # the SwiGLU clamp scaled to the tiny weights (|gate_up| ~ 0.1) so that it acts, as 7 does on the real model
        return T.GptOssConfig(**{**moe, "num_key_value_heads": H if kind == "gpt_oss-mha" else 2},
                              num_local_experts=4, sliding_window=4, head_dim=8, swiglu_limit=0.1)
    if kind in ("cohere", "cohere-qk"):  # logit_scale 0.0625 as Command-R
        return T.CohereConfig(**COMMON, num_key_value_heads=2, use_qk_norm=kind == "cohere-qk", logit_scale=0.0625)
    if kind == "granite":  # Granite 3.0 2B's multipliers
        return T.GraniteConfig(**COMMON, num_key_value_heads=2, embedding_multiplier=12.0, residual_multiplier=0.22,
                               attention_multiplier=0.015625, logits_scaling=8.0)
    if kind == "bloom":
        return T.BloomConfig(vocab_size=V, hidden_size=D, n_layer=L, n_head=H, hidden_dropout=0.0,
                             attention_dropout=0.0)
    if kind == "olmo2":
        return T.Olmo2Config(**COMMON, num_key_value_heads=2)
    if kind == "opt":
        return T.OPTConfig(vocab_size=V, hidden_size=D, ffn_dim=F, num_hidden_layers=L, num_attention_heads=H,
                           max_position_embeddings=160, word_embed_proj_dim=D, dropout=0.0, pad_token_id=0)
    raise ValueError(kind)


def family_config(kind: str, attn: str = "sdpa") -> T.PretrainedConfig:
    if kind in KINDS:
        return tiny_config(kind, attn)
    c = new_config(kind)
    for a in ("bos_token_id", "eos_token_id"):  # defaults name ids of the real vocabularies
        setattr(c, a, 1)
    c.pad_token_id = 0
    # Bloom computes attention inline; gpt-oss has no SDPA path (its sinks need eager, flex or flash kernels)
    c._attn_implementation = "eager" if kind == "bloom" or kind.startswith("gpt_oss") else attn
    return c


def realistic_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give norm weights realistic spreads (in place): a wrongly handled scale then shows."""
    g = torch.Generator().manual_seed(seed)
    gemma = model.config.model_type.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not ("norm" in name or "ln" in name or name.endswith("sinks")):
                continue
            z = torch.randn(p.shape, generator=g)
            if name.endswith("sinks"):  # gpt-oss's learned sink logits are O(1), not the init's 0.02
                p.copy_(1.0 + z)
            elif name.endswith("bias"):
                p.copy_(0.1 * z)
            else:
                w = torch.exp(0.5 * z)
                p.copy_(w - 1 if gemma else w)  # Gemma's norms scale by (1 + weight)
    return model


def family_hf(kind: str, attn: str = "sdpa", dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    m = T.AutoModelForCausalLM.from_config(family_config(kind, attn))
    return realistic_(m, seed).to(dtype).eval()


def family_model(kind: str, attn: str = "sdpa", dtype: torch.dtype = torch.float32, seed: int = 0) -> HookedModel:
    return HookedModel(family_hf(kind, attn, dtype, seed), tokenizer=None, name=f"tiny-{kind}")


WORDS = ("the tower is in city of paris rome london big ben colosseum a movie was good bad it and to "
         "there then when we you i be at on for with this that john mary gave drink store went").split()


def word_tokenizer():
    return word_level_tokenizer(WORDS)


def with_words(m: HookedModel) -> HookedModel:
    """Attach the word tokenizer (and point the configs' special ids at it)."""
    m.tokenizer = word_tokenizer()
    for c in (m.model.config, m.model.generation_config):
        c.bos_token_id = c.eos_token_id = 1
        c.pad_token_id = 0
    return m
