"""Shared fixtures: tiny random-init models of every supported family, and the embedded model."""

from __future__ import annotations

import os

import pytest
import torch
import transformers as T

from uncover import HookedModel

V, D, L, H, F = 64, 32, 3, 4, 48


def tiny_config(kind: str, attn: str = "sdpa") -> T.PretrainedConfig:
    """A tiny config for ``kind`` (family plus variant: ``llama-gqa``, ``gpt_neox-seq`` ...)."""
    common = dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H)
    if kind == "llama":
        c = T.LlamaConfig(**common, num_key_value_heads=H)
    elif kind == "llama-gqa":
        c = T.LlamaConfig(**common, num_key_value_heads=2, attention_bias=True, mlp_bias=True)
    elif kind == "mistral":
        c = T.MistralConfig(**common, num_key_value_heads=2, sliding_window=4)
    elif kind == "qwen2":
        c = T.Qwen2Config(**common, num_key_value_heads=2)
    elif kind == "qwen3":
        c = T.Qwen3Config(**common, num_key_value_heads=2, head_dim=8)
    elif kind == "gemma":
        c = T.GemmaConfig(**common, num_key_value_heads=1, head_dim=8)
    elif kind == "gemma2":
        c = T.Gemma2Config(**common, num_key_value_heads=2, head_dim=8, sliding_window=4)
        attn = "eager"
    elif kind == "gemma3":
        c = T.Gemma3TextConfig(**common, num_key_value_heads=2, head_dim=8, sliding_window=4)
    elif kind == "gpt2":
        c = T.GPT2Config(vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_positions=64,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    elif kind == "gpt_neox":
        c = T.GPTNeoXConfig(**common, use_parallel_residual=True)
    elif kind == "gpt_neox-seq":
        c = T.GPTNeoXConfig(**common, use_parallel_residual=False)
    else:
        raise ValueError(kind)
    c._attn_implementation = attn
    return c


KINDS = ["llama", "llama-gqa", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gpt2", "gpt_neox",
         "gpt_neox-seq"]


def tiny_hf(kind: str, attn: str = "sdpa", dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    m = T.AutoModelForCausalLM.from_config(tiny_config(kind, attn))
    # random-init norms are all ones: perturb them so that norm handling is really tested
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m.to(dtype).eval()


def tiny(kind: str, attn: str = "sdpa", dtype: torch.dtype = torch.float32) -> HookedModel:
    return HookedModel(tiny_hf(kind, attn, dtype), tokenizer=None, name=f"tiny-{kind}")


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


def tokens(batch: int = 2, pos: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (batch, pos), generator=g)


@pytest.fixture(scope="session")
def real():
    """The embedded SmolLM2-135M-Instruct (converted once per cache)."""
    import uncover

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return uncover.load()


@pytest.fixture
def one_thread():
    """Tiny models: one torch thread (fastest, and immune to spin-waiting on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread_no_grad():
    """Tiny models: one thread is fastest, and immune to spin-waiting on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)


def word_level_tokenizer(words: list[str], decode_spaces: bool = False):
    """A word-level tokenizer over ``words`` (ids 0-2: pad, eos, unk), for tiny models that read text.

    ``decode_spaces``: decode with spaces between words (WordPiece's decoder) instead of joining them.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    assert len(vocab) <= V
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    if decode_spaces:
        t.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
