"""Low-rank matrices kept as factors ``A @ B`` (TransformerLens's ``FactoredMatrix``).

A head's full QK or OV circuit over the vocabulary is ``d_vocab × d_vocab`` but has rank at
most ``d_head``. Everything here works on the factors (Elhage et al. 2021, "A Mathematical
Framework for Transformer Circuits"): the nonzero eigenvalues of ``AB`` are those of ``BA``
(``r × r``), and the singular values of ``AB`` are those of ``R_A R_Bᵀ`` where ``A = Q_A R_A`` and
``Bᵀ = Q_B R_B`` are thin QR factorisations. Entries are materialised only for chosen rows and
columns, or in chunks when looking for the largest ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from uncover.core.errors import UncoverError

Index = torch.Tensor | Sequence[int] | None


def _idx(index: Index, n: int) -> torch.Tensor:
    if index is None:
        return torch.arange(n)
    t = torch.as_tensor(index, dtype=torch.long).flatten()
    if t.numel() and (int(t.min()) < -n or int(t.max()) >= n):
        raise UncoverError(f"index out of range for a dimension of size {n}: {t.tolist()[:8]}")
    return t % n


@dataclass
class LowRank:
    """The matrix ``A @ B`` with ``A: [m, r]`` and ``B: [r, n]``, never materialised whole.

    >>> A, B = torch.randn(50, 3, dtype=torch.float64), torch.randn(3, 50, dtype=torch.float64)
    >>> M = LowRank(A, B)
    >>> M.shape, M.rank
    ((50, 50), 3)
    >>> torch.allclose(M.full([1, 2], [4]), (A @ B)[[1, 2]][:, [4]])
    True
    """

    A: torch.Tensor
    B: torch.Tensor

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.B.dim() != 2 or self.A.shape[1] != self.B.shape[0]:
            raise UncoverError(f"factors must be [m, r] and [r, n]; got {tuple(self.A.shape)} and "
                               f"{tuple(self.B.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.A.shape[0], self.B.shape[1])

    @property
    def rank(self) -> int:
        """The inner dimension ``r`` (an upper bound on the true rank)."""
        return self.A.shape[1]

    @property
    def T(self) -> LowRank:
        """The transpose ``Bᵀ Aᵀ``."""
        return LowRank(self.B.T, self.A.T)

    def __matmul__(self, other: LowRank | torch.Tensor) -> LowRank:
        """Product with another low-rank matrix (or a dense ``[n, p]`` one), still factored."""
        if isinstance(other, LowRank):
            if self.rank <= other.rank:
                return LowRank(self.A, (self.B @ other.A) @ other.B)
            return LowRank(self.A @ (self.B @ other.A), other.B)
        return LowRank(self.A, self.B @ other)

    def to(self, dtype: torch.dtype) -> LowRank:
        return LowRank(self.A.to(dtype), self.B.to(dtype))

    def full(self, rows: Index = None, cols: Index = None) -> torch.Tensor:
        """Entries ``[len(rows), len(cols)]`` for chosen rows/columns (all by default: mind the size)."""
        r, c = _idx(rows, self.shape[0]), _idx(cols, self.shape[1])
        return self.A[r.to(self.A.device)] @ self.B[:, c.to(self.B.device)]

    def diag(self) -> torch.Tensor:
        """The diagonal ``[min(m, n)]`` (for the OV circuit: how much each token predicts itself)."""
        k = min(self.shape)
        return (self.A[:k] * self.B[:, :k].T).sum(-1)

    def eigenvalues(self) -> torch.Tensor:
        """The ``r`` eigenvalues of largest magnitude (complex, sorted by magnitude, descending).

        The other ``m - r`` eigenvalues of a square ``AB`` are zero.

        >>> A, B = torch.randn(40, 2, dtype=torch.float64), torch.randn(2, 40, dtype=torch.float64)
        >>> full = torch.linalg.eigvals(A @ B)
        >>> big = full[full.abs().argsort(descending=True)[:2]]
        >>> torch.allclose(LowRank(A, B).eigenvalues().abs(), big.abs())
        True
        """
        if self.shape[0] != self.shape[1]:
            raise UncoverError(f"eigenvalues need a square matrix; this one is {self.shape}")
        ev = torch.linalg.eigvals((self.B @ self.A).to(torch.float64))
        return ev[ev.abs().argsort(descending=True)]

    def singular_values(self) -> torch.Tensor:
        """The ``min(r, m, n)`` largest singular values, descending (float64)."""
        ra = torch.linalg.qr(self.A.to(torch.float64), mode="r").R
        rb = torch.linalg.qr(self.B.T.to(torch.float64), mode="r").R
        return torch.linalg.svdvals(ra @ rb.T)

    def norm(self) -> float:
        """Frobenius norm."""
        return float(self.singular_values().pow(2).sum().sqrt())

    def copying_score(self) -> float:
        """``Re(Σλ) / Σ|λ|`` over the eigenvalues: 1 for a pure copier, -1 for a pure anti-copier.

        >>> LowRank(torch.eye(4)[:, :2], torch.eye(4)[:2]).copying_score()
        1.0
        """
        ev = self.eigenvalues()
        total = float(ev.abs().sum())
        return float(ev.sum().real) / total if total > 0 else 0.0

    def top_pairs(self, k: int = 10, rows: Index = None, cols: Index = None, *, largest: bool = True,
                  chunk: int = 2048) -> list[tuple[int, int, float]]:
        """The ``k`` largest (or smallest) entries as ``(row, col, value)``, over chosen rows/columns.

        Rows are materialised ``chunk`` at a time, so the whole matrix never is.

        >>> M = LowRank(torch.tensor([[1.0], [2.0], [-3.0]]), torch.tensor([[1.0, -1.0]]))
        >>> M.top_pairs(2)
        [(2, 1, 3.0), (1, 0, 2.0)]
        """
        r, c = _idx(rows, self.shape[0]), _idx(cols, self.shape[1])
        sign = 1.0 if largest else -1.0
        best_v = torch.empty(0)
        best_i = torch.empty(0, dtype=torch.long)
        Bc = self.B[:, c.to(self.B.device)]
        for start in range(0, len(r), chunk):
            rr = r[start : start + chunk]
            block = (self.A[rr.to(self.A.device)] @ Bc).float().cpu() * sign  # [chunk, len(cols)]
            v, i = block.flatten().topk(min(k, block.numel()))
            flat = (start + i // len(c)) * len(c) + i % len(c)
            best_v, order = torch.cat([best_v, v]).topk(min(k, len(best_v) + len(v)))
            best_i = torch.cat([best_i, flat])[order]
        return [(int(r[i // len(c)]), int(c[i % len(c)]), float(v) * sign) for v, i in zip(best_v, best_i)]
