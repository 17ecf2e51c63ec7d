"""Training a tiny byte-level GPT-2 on corpus text with canaries and duplicates, measuring
memorization of every tracked group over training."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
import transformers as T
from tqdm.auto import tqdm

from uncover.core.diverge import check_finite
from uncover.core.threads import torch_threads
from uncover.dynamics.memorization.config import MemConfig
from uncover.dynamics.memorization.data import VOCAB, MemData, make_data
from uncover.dynamics.memorization.metrics import extractable, token_losses, token_memorization
from uncover.hooks.hooked import HookedModel


def build_model(cfg: MemConfig) -> T.GPT2LMHeadModel:
    """A freshly initialised byte-level GPT-2 of ``cfg`` (seeded; no dropout).

    >>> m = build_model(MemConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32))
    >>> m(input_ids=torch.tensor([[104, 105]])).logits.shape
    torch.Size([1, 2, 256])
    """
    hf = T.GPT2Config(vocab_size=VOCAB, n_positions=cfg.seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
                      n_head=cfg.n_heads, n_inner=cfg.d_mlp, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = T.GPT2LMHeadModel(hf)
    return model.eval()


@dataclass
class MemRun:
    """A trained memorization model, its data and the measurements over training."""

    cfg: MemConfig
    """The run's configuration."""
    model: Any
    """The ``GPT2LMHeadModel``."""
    data: MemData
    """Training stream and tracked sequences."""
    history: pd.DataFrame
    """Per step and tracked group (``kind``, ``dups``): ``loss``, ``token_mem``, ``extractable``."""

    @property
    def hooked(self) -> HookedModel:
        """The model as a :class:`HookedModel` (pass byte token tensors)."""
        return HookedModel(self.model, None, name="memorization-gpt2")


def measure(model: Any, data: MemData, k: int, step: int) -> list[dict[str, Any]]:
    """Loss, per-token memorization and extractable fraction of each tracked group (one batched pass)."""
    x = torch.stack([s.tokens for s in data.tracked])
    per = pd.DataFrame({"kind": [s.kind for s in data.tracked], "dups": [s.dups for s in data.tracked],
                        "loss": token_losses(model, x).mean(1).tolist(),
                        "token_mem": token_memorization(model, x).tolist(),
                        "extractable": extractable(model, x, k).float().tolist()})
    agg = per.groupby(["kind", "dups"]).agg(n=("loss", "size"), loss=("loss", "mean"),
                                            token_mem=("token_mem", "mean"), extractable=("extractable", "mean"))
    return [{"step": step, **r} for r in agg.reset_index().to_dict("records")]


def train_memorization(cfg: MemConfig, *, progress: bool = True, threads: int | None = None) -> MemRun:
    """Train the model of ``cfg`` on :func:`~uncover.dynamics.memorization.data.make_data`.

    Shuffled epochs over the training stream, AdamW with warm-up and cosine decay; every
    ``eval_every`` steps each tracked group is measured (see :func:`measure`).

    >>> run = train_memorization(MemConfig(n_corpus=16, dup_counts=(1, 2), per_count=1, n_heldout=2,
    ...     n_layers=1, d_model=16, n_heads=2, d_mlp=32, steps=4, eval_every=2, batch_size=4), progress=False)
    >>> sorted(set(run.history.step))
    [0, 2, 4]
    """
    data = make_data(cfg)
    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(cfg.seed + 1)
    rows: list[dict[str, Any]] = []
    order = torch.randperm(len(data.train), generator=g)
    cursor = 0
    with torch_threads(threads):
        model.eval()
        rows += measure(model, data, cfg.k_prefix, 0)
        model.train()
        bar = tqdm(range(cfg.steps), disable=not progress, file=sys.stderr, desc="memorization")
        try:
            for step in bar:
                if cursor + cfg.batch_size > len(order):
                    order, cursor = torch.randperm(len(data.train), generator=g), 0
                x = data.train[order[cursor: cursor + cfg.batch_size]]
                cursor += cfg.batch_size
                warm = min(1.0, (step + 1) / 50)
                cos = 0.1 + 0.45 * (1 + math.cos(math.pi * step / cfg.steps))
                for grp in opt.param_groups:
                    grp["lr"] = cfg.lr * warm * cos
                logits = model(input_ids=x).logits[:, :-1]
                loss = F.cross_entropy(logits.transpose(1, 2), x[:, 1:])
                check_finite(step, loss=loss, lr=cfg.lr, what="memorization training")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                    model.eval()
                    rows += measure(model, data, cfg.k_prefix, step + 1)
                    model.train()
        finally:  # before an error is printed, so that it gets a line of its own
            bar.close()
    check_finite(cfg.steps, params=model.parameters(), lr=cfg.lr, what="memorization training")
    model.eval()
    return MemRun(cfg, model, data, pd.DataFrame(rows))
