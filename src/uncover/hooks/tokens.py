"""Batches of prompts and position addressing.

Prompts of different lengths are right-padded so that every real token keeps the
position it has alone (causal attention never lets padding reach real tokens).
Positions address *real* tokens of each row: ``0`` is the first, ``-1`` each row's
last real token, whatever the padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from uncover.core.errors import UsageError

Positions = int | Sequence[int] | None


@dataclass
class Batch:
    """Token ids and attention mask of a (padded) batch.

    Attributes:
        input_ids: ``[batch, pos]`` token ids.
        attention_mask: ``[batch, pos]`` 1 for real tokens, 0 for padding.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """``[batch]`` number of real tokens per row."""
        return self.attention_mask.sum(-1)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device))

    def columns(self, positions: Positions) -> torch.Tensor:
        """Column index per row of each position: ``[batch, n_positions]`` (``-1`` where absent).

        >>> b = Batch(torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]))
        >>> b.columns(-1).tolist()
        [[2], [1]]
        """
        return position_columns(self.attention_mask, positions, offset=0, q_len=self.input_ids.shape[1])


def position_columns(
    mask: torch.Tensor, positions: Positions, offset: int, q_len: int
) -> torch.Tensor:
    """Map real-token positions to columns of the current forward pass.

    Args:
        mask: ``[batch, total_len]`` attention mask over past and current tokens.
        positions: an int or ints; negative ones count from each row's last real token.
        offset: number of past (cached) columns before the current forward's first column.
        q_len: number of columns in the current forward.

    Returns:
        ``[batch, n_positions]`` long tensor of columns in ``[0, q_len)``, ``-1`` where the
        position is not in this forward (or does not exist in the row).
    """
    if positions is None:
        raise ValueError("positions=None means every position; resolve it before calling")
    pos = [positions] if isinstance(positions, int) else list(positions)
    mask = mask.to(torch.long)
    n_real = mask.sum(-1, keepdim=True)  # [batch, 1]
    p = torch.tensor(pos, device=mask.device).unsqueeze(0)  # [1, k]
    target = torch.where(p < 0, n_real + p, p)  # [batch, k] index among real tokens
    rank = mask.cumsum(-1) - 1  # [batch, total]
    rank = torch.where(mask.bool(), rank, torch.full_like(rank, -10))
    hit = rank.unsqueeze(1) == target.unsqueeze(-1)  # [batch, k, total]
    found = hit.any(-1)
    col = hit.float().argmax(-1) - offset
    ok = found & (target >= 0) & (target < n_real) & (col >= 0) & (col < q_len)
    return torch.where(ok, col, torch.full_like(col, -1))


def check_texts(inputs: object, what: str = "prompt") -> list[str]:
    """Prompts as a non-empty list of non-empty UTF-8 strings, or a :class:`UsageError` saying which is wrong.

    >>> check_texts("Hello")
    ['Hello']
    >>> check_texts(["ok", "  "])
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: prompt 1 is empty or whitespace only; give some text
    """
    if inputs is None:
        raise UsageError(f"no {what} given (None); give a string, a list of strings or token ids [batch, pos]")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, Sequence) or isinstance(texts, bytes):
        raise UsageError(f"{what}s must be a string or a list of strings, got {type(inputs).__name__}")
    texts = list(texts)
    if not texts:
        raise UsageError(f"no {what}s given (an empty list)")
    for i, t in enumerate(texts):
        where = what if isinstance(inputs, str) else f"{what} {i}"
        if not isinstance(t, str):
            raise UsageError(f"{where} must be a string, got {type(t).__name__} {t!r}")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise UsageError(f"{where} is not valid text (a lone surrogate at character {e.start})") from None
        if not t.strip():
            raise UsageError(f"{where} is empty or whitespace only; give some text")
    return texts


def check_token_ids(ids: torch.Tensor, d_vocab: int) -> torch.Tensor:
    """Token ids as ``[batch, pos]`` integers within the vocabulary, or a :class:`UsageError`.

    >>> check_token_ids(torch.tensor([1, 2]), 10).shape
    torch.Size([1, 2])
    >>> check_token_ids(torch.tensor([[1.0, 2.0]]), 10)
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: token ids must be integers, got a torch.float32 tensor
    """
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise UsageError(f"token ids must be integers, got a {ids.dtype} tensor")
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2:
        raise UsageError(f"token ids must be [batch, pos] (or [pos]), got shape {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise UsageError(f"token ids are empty (shape {tuple(ids.shape)})")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= d_vocab:
        raise UsageError(f"token ids must be in 0..{d_vocab - 1} (the vocabulary), got values {lo}..{hi}")
    return ids.long() if ids.dtype != torch.long else ids


def special_prefix(tokenizer: Any) -> list[int]:
    """The ids a tokenizer puts before a text's own tokens (its BOS), ``[]`` when it adds none.

    This is the tokenizer's own convention (``add_special_tokens=True``): Llama, Gemma and
    Mistral tokenizers prepend BOS, GPT-2's and SmolLM2's do not. A model trained with BOS
    sees it first in every sequence, so corpus pipelines put it there too (the cross-entropy of
    a BOS-trained model without it can double). ``tokenizer``: a tokenizer or a ``HookedModel``.

    >>> special_prefix(model)  # SmolLM2 adds no BOS
    []
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer) if hasattr(tokenizer, "to_str_tokens") else tokenizer
    if tok is None:
        return []
    try:
        plain = tok(["a"], add_special_tokens=False)["input_ids"][0]
        full = tok(["a"], add_special_tokens=True)["input_ids"][0]
    except (ValueError, TypeError, KeyError, IndexError):  # a stand-in that cannot encode the probe adds nothing
        return []
    for k in range(len(full) - len(plain) + 1):  # the text's own ids inside the full encoding (EOS may follow)
        if full[k:k + len(plain)] == plain:
            return list(full[:k])
    return []
