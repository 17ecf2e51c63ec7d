"""The grokking model as a standard Hugging Face model (Nanda et al. 2023's architecture).

A one-layer ``GPT2LMHeadModel`` with ReLU MLP, untied unembedding, no dropout, and its
LayerNorms replaced by ``nn.Identity`` (the uncover GPT-2 adapter reads identity norms as
"no norm": hooks, caches and residual decompositions work unchanged). Vocabulary: the
numbers ``0..p-1`` and ``=`` (token ``p``); only the first ``p`` logits at the last position
are trained.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers as T
from safetensors.torch import load_file, save_file
from torch import nn

from uncover.dynamics.grokking.config import GrokConfig
from uncover.hooks.hooked import HookedModel


def build_model(cfg: GrokConfig) -> T.GPT2LMHeadModel:
    """A freshly initialised (seeded by ``cfg.seed``, weights times ``cfg.init_scale``) grokking model.

    >>> m = build_model(GrokConfig(p=7, d_model=8, n_heads=2, d_mlp=16))
    >>> m(input_ids=torch.tensor([[1, 2, 7]])).logits.shape
    torch.Size([1, 3, 8])
    """
    hf = T.GPT2Config(
        vocab_size=cfg.p + 1, n_positions=3, n_embd=cfg.d_model, n_layer=1, n_head=cfg.n_heads,
        n_inner=cfg.d_mlp, activation_function="relu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    hf._attn_implementation = "eager"  # fastest for 3 positions, and patterns are plain tensors
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = T.GPT2LMHeadModel(hf)
    if cfg.init_scale != 1.0:
        with torch.no_grad():
            for w in model.parameters():
                w.mul_(cfg.init_scale)
    for block in model.transformer.h:
        block.ln_1 = nn.Identity()
        block.ln_2 = nn.Identity()
    model.transformer.ln_f = nn.Identity()
    return model.eval()


def hooked(model: T.GPT2LMHeadModel, cfg: GrokConfig) -> HookedModel:
    """The model as a :class:`HookedModel` (no tokenizer: pass token tensors ``[batch, 3]``).

    >>> cfg = GrokConfig(p=7, d_model=8, n_heads=2, d_mlp=16)
    >>> hm = hooked(build_model(cfg), cfg)
    >>> logits, cache = hm.run_with_cache(torch.tensor([[1, 2, 7]]))
    >>> cache["blocks.0.mlp.hook_post"].shape
    torch.Size([1, 3, 16])
    """
    return HookedModel(model, None, name=f"grok-p{cfg.p}{cfg.op}")


def last_logits(model: nn.Module, tokens: torch.Tensor, p: int) -> torch.Tensor:
    """Logits of the answer ``[batch, p]`` (last position, number tokens only)."""
    return model(input_ids=tokens).logits[:, -1, :p]


@contextlib.contextmanager
def last_position_mlp(model: T.GPT2LMHeadModel) -> Iterator[None]:
    """Run the MLP on the last position only (the other positions get a zero MLP output).

    In a one-layer model nothing reads the MLP output at earlier positions except their own
    logits, which training ignores: the answer logits and every gradient are unchanged while
    the MLP (most of the FLOPs) costs a third.
    """
    handles = []
    for block in model.transformer.h:
        seq: dict[str, int] = {}

        def pre(mod: nn.Module, args: tuple, seq: dict[str, int] = seq) -> tuple:
            seq["n"] = args[0].shape[1]
            return (args[0][:, -1:],)

        def post(mod: nn.Module, args: tuple, out: torch.Tensor, seq: dict[str, int] = seq) -> torch.Tensor:
            pad = out.new_zeros(out.shape[0], seq["n"] - 1, out.shape[2])
            return torch.cat([pad, out], dim=1)

        handles += [block.mlp.register_forward_pre_hook(pre), block.mlp.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write the model's weights to a ``.safetensors`` file."""
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


def load_model(cfg: GrokConfig, path: str | Path) -> T.GPT2LMHeadModel:
    """Build the model of ``cfg`` and load weights written by :func:`save_weights`."""
    model = build_model(cfg)
    model.load_state_dict(load_file(str(path)))
    return model
