"""BOS convention: corpus pipelines start every block as the tokenizer starts a text, and statistics skip it."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny
from uncover.data.corpus import CorpusError, prefix_len, token_blocks
from uncover.hooks.tokens import special_prefix

WORDS = "the a of is in to and it that was for on are with as be at by this had not".split()
TEXTS = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40)) for i in range(12)]


def word_tokenizer(bos: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "<bos>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        t.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                         special_tokens=[("<bos>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   bos_token="<bos>")


def test_special_prefix_with_bos_and_eos():
    tok = word_tokenizer(True)
    from tokenizers import processors

    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 3), ("<eos>", 1)])
    assert tok("the a")["input_ids"] == [3, 4, 5, 1] and special_prefix(tok) == [3]


@pytest.mark.parametrize("bos", [True, False])
def test_token_blocks_follow_the_tokenizer(bos):
    tok = word_tokenizer(bos)
    assert special_prefix(tok) == ([3] if bos else [])
    blocks = token_blocks(tok, TEXTS, block_len=16)
    assert blocks.shape[1] == 16
    assert bool((blocks[:, 0] == 3).all()) == bos
    assert int((blocks == 3).sum()) == (len(blocks) if bos else 0)  # BOS only at the start of each block
    assert prefix_len(tok, blocks) == (1 if bos else 0)
    # the text between the BOS tokens is the same stream either way
    plain = token_blocks(tok, TEXTS, block_len=16, bos=False)
    body = blocks[:, 1:].flatten() if bos else blocks.flatten()
    n = min(len(body), plain.numel())
    assert torch.equal(body[:n], plain.flatten()[:n])
    if not bos:
        with pytest.raises(CorpusError, match="adds no BOS"):
            token_blocks(tok, TEXTS, block_len=16, bos=True)
    else:
        with pytest.raises(CorpusError, match="no room"):
            token_blocks(tok, TEXTS, block_len=1)


@pytest.mark.parametrize("bos", [True, False])
def test_scale_corpus_blocks_and_key_moments_skip_bos(bos, one_thread, tmp_path):
    from uncover.editing.stats import key_moments
    from uncover.scale.corpora import Corpus
    from uncover.scale.corpora import token_blocks as stream_blocks

    tok = word_tokenizer(bos)
    m = tiny("llama")
    m.tokenizer = tok
    blocks = token_blocks(tok, TEXTS, block_len=8)[:4]
    assert bool((blocks[:, 0] == 3).all()) == bos
    (tmp_path / "c.txt").write_text("\n\n".join(TEXTS[:3]))
    streamed = list(stream_blocks(m, Corpus.open(tmp_path / "c.txt"), 8, max_blocks=2))
    assert len(streamed) == 2
    assert all(bool(b[0] == 3) == bos for b in streamed)
    # E[k kᵀ] over the text positions only: the BOS key (an attention-sink outlier) is left out
    C = key_moments(m, [1], blocks, progress=False)[1]
    _, cache = m.run_with_cache(blocks, names=["blocks.1.mlp.hook_post"])
    k = cache["blocks.1.mlp.hook_post"][:, (1 if bos else 0):].reshape(-1, m.cfg.d_mlp).double()
    torch.testing.assert_close(C, k.T @ k / len(k))
