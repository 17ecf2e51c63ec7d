"""Memorization metrics: per-token memorization (Tirumala et al. 2022), exact k-extractable
memorization (Carlini et al. 2023), and membership inference from the loss and the
zlib-normalised loss (Carlini et al. 2021) scored by AUROC."""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def token_losses(model: nn.Module, tokens: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Next-token NLL ``[n, seq_len - 1]`` of each sequence under ``model`` (an HF causal LM)."""
    out = []
    for i in range(0, len(tokens), batch):
        x = tokens[i: i + batch]
        logits = model(input_ids=x).logits[:, :-1].float()
        out.append(F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none"))
    return torch.cat(out) if out else torch.zeros(0, tokens.shape[1] - 1)


@torch.no_grad()
def token_memorization(model: nn.Module, tokens: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Per-sequence fraction of next tokens that are the model's argmax (Tirumala et al.): ``[n]``."""
    out = []
    for i in range(0, len(tokens), batch):
        x = tokens[i: i + batch]
        pred = model(input_ids=x).logits[:, :-1].argmax(-1)
        out.append((pred == x[:, 1:]).float().mean(1))
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def greedy_continuation(model: nn.Module, prefix: torch.Tensor, length: int, use_cache: bool = True) -> torch.Tensor:
    """Greedy continuation ``[n, length]`` of equal-length prefixes ``[n, k]`` (no sampling, no padding).

    With ``use_cache`` the model's KV cache is used (one token per forward); without it every
    step reruns the whole sequence (the reference the tests compare with).
    """
    import inspect

    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out, past, x = [], None, prefix
    for _ in range(length):
        if use_cache:
            res = model(input_ids=x, use_cache=True, **{key: past})
            past = res.cache if key == "cache" else res.past_key_values
        else:
            res = model(input_ids=torch.cat([prefix, *out], 1) if out else prefix)
        nxt = res.logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        x = nxt
    return torch.cat(out, 1) if out else prefix[:, :0]


def match_lengths(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Number of leading tokens where ``generated`` equals ``target`` (both ``[n, s]``): ``[n]``.

    >>> match_lengths(torch.tensor([[1, 2, 3], [1, 9, 3]]), torch.tensor([[1, 2, 3], [1, 2, 3]])).tolist()
    [3, 1]
    """
    same = (generated == target).long()
    return same.cumprod(1).sum(1)


def extractable(model: nn.Module, tokens: torch.Tensor, k: int, batch: int = 256) -> torch.Tensor:
    """Exact k-extractable memorization: the greedy continuation of the first ``k`` tokens
    reproduces the rest of the sequence: ``[n]`` bool."""
    out = []
    for i in range(0, len(tokens), batch):
        x = tokens[i: i + batch]
        gen = greedy_continuation(model, x[:, :k], x.shape[1] - k)
        out.append((gen == x[:, k:]).all(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def zlib_bits(tokens: torch.Tensor) -> torch.Tensor:
    """zlib-compressed size in bits of each byte sequence ``[n, seq_len]``: ``[n]``.

    >>> zlib_bits(torch.tensor([[97] * 64, list(range(64))])).tolist()[0] < 200
    True
    """
    return torch.tensor([8.0 * len(zlib.compress(bytes(row.tolist()), 9)) for row in tokens])


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Area under the ROC curve for scores where ``pos`` should be higher (Mann-Whitney U; ties count 1/2).

    >>> auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])), auroc(torch.tensor([1.0]), torch.tensor([1.0]))
    (1.0, 0.5)
    """
    pos, neg = pos.double().flatten(), neg.double().flatten()
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def membership_scores(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Membership scores (higher = more likely a training member): ``loss`` = minus the mean NLL,
    ``zlib`` = minus the total NLL in bits over the zlib size in bits."""
    nll = token_losses(model, tokens)
    bits = nll.sum(1) / torch.log(torch.tensor(2.0))
    return {"loss": -nll.mean(1), "zlib": -bits / zlib_bits(tokens)}
