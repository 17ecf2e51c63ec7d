"""Modular arithmetic data for grokking (Power et al. 2022): ``a b =`` → ``(a op b) mod p``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from uncover.dynamics.grokking.config import GrokConfig


def apply_op(a: torch.Tensor, b: torch.Tensor, op: str, p: int) -> torch.Tensor:
    """``(a op b) mod p`` elementwise; ``/`` multiplies by ``b``'s modular inverse.

    >>> apply_op(torch.tensor([3, 5]), torch.tensor([4, 2]), "/", 7).tolist()
    [6, 6]
    """
    if op == "+":
        return (a + b) % p
    if op == "-":
        return (a - b) % p
    if op == "*":
        return (a * b) % p
    inv = torch.tensor([pow(int(x), -1, p) if x % p else 0 for x in range(p)])
    return (a * inv[b]) % p


@dataclass(frozen=True)
class ModularData:
    """All ``(a, b)`` pairs of one task and a seeded train/test split.

    ``tokens`` ``[n, 3]`` are ``a b =`` (``=`` is token ``p``), ``labels`` ``[n]`` the answers,
    ``is_train`` ``[n]`` the split. Rows are in ``(a, b)`` order (``a * p + b``; for ``/``, pairs
    with ``b = 0`` are absent).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    is_train: torch.Tensor
    p: int
    op: str

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [n_train, 3], labels [n_train])``."""
        return self.tokens[self.is_train], self.labels[self.is_train]

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [n_test, 3], labels [n_test])``."""
        return self.tokens[~self.is_train], self.labels[~self.is_train]


def make_data(cfg: GrokConfig) -> ModularData:
    """The dataset of ``cfg``: every pair once, ``round(train_frac * n)`` of them for training.

    >>> d = make_data(GrokConfig(p=7, op="/"))
    >>> d.tokens.shape, int(d.is_train.sum()), d.tokens[0].tolist(), int(d.labels[0])
    (torch.Size([42, 3]), 13, [0, 1, 7], 0)
    """
    p = cfg.p
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    if cfg.op == "/":
        keep = b != 0
        a, b = a[keep], b[keep]
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    labels = apply_op(a, b, cfg.op, p)
    n = len(a)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    is_train = torch.zeros(n, dtype=torch.bool)
    is_train[order[: round(cfg.train_frac * n)]] = True
    return ModularData(tokens, labels, is_train, p, cfg.op)
