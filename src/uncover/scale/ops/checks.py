"""Checks the dataset-scale operations share when their config meets the model, before any shard runs.

Shards hold values per position, so a hook with one value per *pair* of positions (attention
patterns and scores) is refused naming the hooks that work; and the memory a shard (or a batch of
one) will hold, at the widths the model gives its hooks (``logits``: d_vocab values per position;
per-head hooks: heads x d_head), is checked against what the machine has
(:func:`uncover.core.memory.check_fits`), so ``--hooks logits --shard-blocks 100000`` is one usage
error instead of an allocation failure minutes later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from uncover.core.errors import UsageError
from uncover.core.memory import check_fits
from uncover.core.names import HookName

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

#: hooks whose values are per pair of positions (``[batch, head, query, key]``): no row per position
NOT_PER_POSITION = ("hook_pattern", "hook_attn_scores")
USABLE = ("residual (hook_resid_pre/mid/post, hook_embed), hook_attn_out, hook_mlp_out, neurons (mlp.hook_pre/"
          "hook_post), per-head attn.hook_q/k/v/z/result, ln_final.hook_normalized or logits")


def hook_widths(model: HookedModel, hooks: Sequence[str], owner: str, label: str) -> dict[str, int]:
    """Values per position of each hook (one forward pass of two tokens, stopped at the last hook); refuses hooks
    without a value per position, naming those that have one.

    >>> hook_widths(model, ["blocks.0.hook_resid_post", "logits"], "Demo", "hooks (--hooks)")
    {'blocks.0.hook_resid_post': 576, 'logits': 49152}
    >>> hook_widths(model, ["blocks.0.attn.hook_pattern"], "Demo", "hooks (--hooks)")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: Demo: hooks (--hooks) blocks.0.attn.hook_pattern has one value per pair of \
positions, not one per position; give ...
    """
    from uncover.hooks.harvest import capture

    names = model.select_names(list(hooks))
    for n in names:
        if n != "logits" and HookName.parse(n).leaf in NOT_PER_POSITION:
            raise UsageError(f"{owner}: {label} {n} has one value per pair of positions, not one per position; "
                             f"give {USABLE}")
    _, got = capture(model, torch.zeros(1, 2, dtype=torch.long), names)
    return {h: int(got[h][0, 0].numel()) for h in names}


def shard_blocks(shard_blocks: int, block_len: int, tokens: int | None) -> int:
    """Blocks one shard holds at most: ``shard_blocks``, or fewer when ``tokens`` make fewer blocks in all.

    >>> shard_blocks(64, 128, None), shard_blocks(64, 128, 1000)
    (64, 8)
    """
    return shard_blocks if tokens is None else max(1, min(shard_blocks, math.ceil(tokens / block_len)))


def check_shard_memory(needed: float, what: str, fix: str) -> None:
    """Refuse a shard (or batch) whose ``needed`` bytes the machine cannot hold (values are gathered on the CPU)."""
    check_fits(needed, what, fix, device="cpu")
