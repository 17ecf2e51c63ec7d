"""Q-, K- and V-composition scores between heads (Elhage et al. 2021, "A Mathematical
Framework for Transformer Circuits").

A head ``A`` of an earlier layer writes ``x W_OV^A`` into the residual stream; a later head
``B`` reads it through its queries (Q-composition), keys (K-composition) or values
(V-composition). With row-vector matrices ``W_OV = W_V W_O`` and ``W_QK = W_Q W_Kᵀ`` (both
``[d_model, d_model]``, folded as in :mod:`uncover.heads.circuits`) the score is

    ``‖W_OV^A M‖_F / (‖W_OV^A‖_F ‖M‖_F)``  with  ``M = W_QK^B`` (Q), ``(W_QK^B)ᵀ`` (K), ``W_OV^B`` (V)

(TransformerLens's ``all_composition_scores``). Each product ``X₁ Y₁ᵀ X₂ Y₂ᵀ`` of rank-``d_head``
factors has the Frobenius norm of ``R_{X₁} (Y₁ᵀ X₂) R_{Y₂}ᵀ`` (``X = Q_X R_X``), computed as
one inner product of packed ``d_model × d_model`` Gram matrices per pair (one Gram per head).
Random matrices already compose a little: the baseline is the mean score of Gaussian factors of the same shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from uncover.core.errors import UncoverError
from uncover.core.names import head_label
from uncover.core.results import Result
from uncover.heads.circuits import head_weights

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel

KINDS = ("q", "k", "v")


def _gram(x: torch.Tensor) -> torch.Tensor:
    """``xᵀ x`` of ``[..., d_model, r]`` factors: ``[..., r, r]``."""
    return x.transpose(-1, -2) @ x


def _factors(model: HookedModel, layer: int, kind: str, dtype: torch.dtype):
    """``(X₁, Y₁)`` of the writer OV (``X₁ Y₁ᵀ = W_V W_O``) and ``(X₂, Y₂)`` of the reader matrix."""
    hw = head_weights(model, layer, dtype)
    write = (hw.W_V, hw.W_O.transpose(-1, -2))
    read = {"q": (hw.W_Q, hw.W_K), "k": (hw.W_K, hw.W_Q), "v": write}[kind]
    return write, read


def _pack(G: torch.Tensor) -> torch.Tensor:
    """Symmetric ``[n, d, d]`` packed as the upper triangle ``[n, d(d+1)/2]`` with off-diagonal
    entries times √2, so that dot products of packed matrices are Frobenius inner products."""
    d = G.shape[-1]
    iu = torch.triu_indices(d, d)
    w = torch.where(iu[0] == iu[1], 1.0, 2.0**0.5).to(G)
    return G[:, iu[0], iu[1]] * w


def _sides(X: torch.Tensor, Y: torch.Tensor, writer: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ``d_model × d_model`` Gram of the side that meets the other matrix, and ``‖X Yᵀ‖_F`` (``[n]``).

    ``‖X₁ Y₁ᵀ X₂ Y₂ᵀ‖_F² = tr(Y₁ᵀ X₂ (Y₂ᵀY₂) X₂ᵀ Y₁ (X₁ᵀX₁)) = ⟨Y₁ (X₁ᵀX₁) Y₁ᵀ, X₂ (Y₂ᵀY₂) X₂ᵀ⟩``:
    one ``d_model²`` dot product per head pair instead of a ``d_model × d_head²`` product.
    """
    Gx, Gy = _gram(X), _gram(Y)  # [n, r, r]
    side = Y @ Gx @ Y.transpose(-1, -2) if writer else X @ Gy @ X.transpose(-1, -2)  # [n, d, d]
    return _pack(side), (Gx * Gy).sum((-1, -2)).clamp_min(0).sqrt()


def pair_scores(X1: torch.Tensor, Y1: torch.Tensor, X2: torch.Tensor, Y2: torch.Tensor) -> torch.Tensor:
    """Scores ``[a, b]`` between writers ``X1[a] Y1[a]ᵀ`` and readers ``X2[b] Y2[b]ᵀ`` (all ``[n, d, r]``).

    >>> X1, Y1, X2, Y2 = (torch.randn(2, 16, 3, dtype=torch.float64) for _ in range(4))
    >>> W_A, W_B = X1[0] @ Y1[0].T, X2[1] @ Y2[1].T
    >>> direct = (W_A @ W_B).norm() / (W_A.norm() * W_B.norm())
    >>> torch.allclose(pair_scores(X1, Y1, X2, Y2)[0, 1], direct)
    True
    """
    g1, n1 = _sides(X1, Y1, writer=True)
    g2, n2 = _sides(X2, Y2, writer=False)
    return (g1 @ g2.T).clamp_min(0).sqrt() / (n1[:, None] * n2[None, :])


def random_baseline(d_model: int, d_head: int, n: int = 64, seed: int = 0, dtype: torch.dtype = torch.float64) -> float:
    """Mean composition score of Gaussian rank-``d_head`` matrices in ``d_model`` dimensions.

    >>> 0.0 < random_baseline(64, 8) < 0.5
    True
    """
    g = torch.Generator().manual_seed(seed)
    X1, Y1, X2, Y2 = (torch.randn(n, d_model, d_head, generator=g, dtype=dtype) for _ in range(4))
    return float(pair_scores(X1, Y1, X2, Y2).diagonal().mean())


@dataclass
class CompositionScores(Result):
    """Composition scores from every head to every head of a later layer.

    Attributes:
        kind: ``q``, ``k`` or ``v``.
        scores: ``[layer, head, layer, head]`` (writer, then reader); NaN unless writer layer < reader layer.
        baseline: the mean score of random matrices of the same shapes.
        model_name: the model.
    """

    kind: str
    scores: torch.Tensor
    baseline: float
    model_name: str = ""

    @property
    def title(self) -> str:
        return f"{self.kind.upper()}-composition scores" + (f" ({self.model_name})" if self.model_name else "")

    def top(self, k: int = 10) -> list[tuple[int, int, int, int, float]]:
        """The ``k`` strongest pairs ``(writer layer, writer head, reader layer, reader head, score)``."""
        flat = torch.nan_to_num(self.scores.flatten(), nan=-1.0)
        idx = torch.argsort(flat, descending=True, stable=True)[:k]
        out = []
        for i in idx.tolist():
            a, b, c, d = (int(x) for x in torch.unravel_index(torch.tensor(i), self.scores.shape))
            out.append((a, b, c, d, float(flat[i])))
        return out

    def summary(self) -> str:
        valid = self.scores[~self.scores.isnan()]
        mean = float(valid.mean()) if valid.numel() else float("nan")
        top = ", ".join(f"{head_label(a, b)}→{head_label(c, d)} {s:.3f}" for a, b, c, d, s in self.top(5))
        return (f"{self.kind.upper()}-composition: random baseline {self.baseline:.3f}, mean over "
                f"{valid.numel()} head pairs {mean:.3f}; strongest: {top}")

    def to_frame(self) -> pd.DataFrame:
        """One row per (writer, reader) pair with writer layer < reader layer, strongest first."""
        L, H = self.scores.shape[:2]
        idx = (~self.scores.isnan()).nonzero()
        vals = self.scores[~self.scores.isnan()]
        df = pd.DataFrame(idx.numpy(), columns=["src_layer", "src_head", "dst_layer", "dst_head"])
        df["score"] = vals.numpy()
        df["over_baseline"] = df["score"] / self.baseline
        return df.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        L, H = self.scores.shape[:2]
        z = self.scores.reshape(L * H, L * H).T.numpy()  # rows: reader, cols: writer
        names = [head_label(li, h) for li in range(L) for h in range(H)]
        fig = go.Figure(go.Heatmap(z=z, x=names, y=names, colorscale="Viridis", colorbar={"title": "score"},
                                   hovertemplate="%{x} → %{y}: %{z:.3f}<extra></extra>"))
        fig.update_layout(title=f"{self.title} (random baseline {self.baseline:.3f})",
                          xaxis_title="writer head (earlier)", yaxis_title="reader head (later)",
                          yaxis={"autorange": "reversed"}, height=max(500, 3 * L * H), width=max(600, 3 * L * H + 150))
        return fig


def composition_scores(model: HookedModel, kind: str = "q", dtype: torch.dtype = torch.float32,
                       baseline_samples: int = 64, readers: Sequence[int] | None = None) -> CompositionScores:
    """Q-, K- or V-composition scores of every (earlier head, later head) pair.

    ``readers``: only these reader layers (the others stay NaN); default all.

    >>> r = composition_scores(model, "k", readers=[18])
    >>> [pair[:4] for pair in r.top(3)]  # (writer layer, head, reader layer, head, score)
    [(17, 8, 18, 7), (17, 8, 18, 8), (17, 8, 18, 6)]
    """
    if kind not in KINDS:
        raise UncoverError(f"unknown composition kind {kind!r}; valid: {', '.join(KINDS)}")
    c = model.cfg
    scores = torch.full((c.n_layers, c.n_heads, c.n_layers, c.n_heads), float("nan"))
    if c.n_layers < 2:
        raise UncoverError("composition needs at least two layers")
    dsts = sorted({int(x) for x in (range(1, c.n_layers) if readers is None else readers)})
    bad = [x for x in dsts if not 1 <= x < c.n_layers]
    if bad or not dsts:
        raise UncoverError(f"reader layers {bad or '[]'} out of range; valid: 1 .. {c.n_layers - 1}")
    with torch.no_grad():
        sides = [_sides(*_factors(model, li, kind, dtype)[0], writer=True) for li in range(max(dsts))]
        g1 = torch.cat([g for g, _ in sides])  # [(n_layers - 1) * head, d_model (d_model + 1) / 2]
        n1 = torch.cat([n for _, n in sides])
        del sides
        H = c.n_heads
        for dst in dsts:
            g2, n2 = _sides(*_factors(model, dst, kind, dtype)[1], writer=False)
            s = (g1[: dst * H] @ g2.T).clamp_min(0).sqrt() / (n1[: dst * H, None] * n2[None, :])
            scores[:dst, :, dst, :] = s.reshape(dst, H, H).float().cpu()
    base = random_baseline(c.d_model, c.d_head, baseline_samples)
    return CompositionScores(kind, scores, base, model.name)
