"""Toy models of superposition (Elhage et al. 2022, "Toy Models of Superposition").

``n`` sparse features ``x_i`` (zero with probability ``S``, else uniform on [0, 1]) are
squeezed into ``m < n`` dimensions and read back: ``h = W x``, ``x' = ReLU(W^T h + b)``,
loss ``sum_i I_i (x_i - x'_i)^2`` with importances ``I_i = decay^i``. Many instances (one per
sparsity level) train at once as a batched ``W [instance, m, n]``.
With dense features the model keeps the ``m`` most important features in orthogonal
directions and drops the rest; as features get sparser it represents more than ``m``
of them, in superposition (antipodal pairs, pentagons ...). ``feature dimensionality``
``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2`` measures the fraction of a dimension feature ``i`` gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from uncover.core.diverge import check_finite
from uncover.core.errors import UncoverError
from uncover.core.results import Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


@dataclass
class ToyModels(Result):
    """Trained toy models of superposition, one per sparsity level.

    Attributes:
        W: ``[instance, m, n]`` embedding; b: ``[instance, n]`` output bias.
        sparsity: ``[instance]`` probability that a feature is zero.
        importance: ``[n]`` feature importances.
        loss: ``[instance]`` final loss.
    """

    W: torch.Tensor
    b: torch.Tensor
    sparsity: list[float]
    importance: torch.Tensor
    loss: torch.Tensor

    @property
    def title(self) -> str:
        i, m, n = self.W.shape
        return f"Toy models of superposition: {n} features in {m} dimensions, {i} sparsity levels"

    def norms(self) -> torch.Tensor:
        """``[instance, n]`` length of each feature's direction ``||W_i||``."""
        return self.W.norm(dim=1)

    def n_represented(self, cutoff: float = 0.5) -> list[int]:
        """Per instance, how many features have ``||W_i|| > cutoff``."""
        return (self.norms() > cutoff).sum(-1).tolist()

    def dimensionality(self) -> torch.Tensor:
        """``[instance, n]`` feature dimensionality ``D_i``."""
        w = self.W
        norms = w.norm(dim=1, keepdim=True).clamp(min=1e-8)
        overlaps = ((w / norms).transpose(1, 2) @ w).pow(2).sum(-1)  # [inst, n]: sum_j (w_i_hat . w_j)^2
        return self.norms().pow(2) / overlaps.clamp(min=1e-12)

    def interference(self) -> torch.Tensor:
        """``[instance, n]``: ``sum_{j != i} (W_i_hat . W_j)^2`` (0 without superposition)."""
        w = self.W
        wh = w / w.norm(dim=1, keepdim=True).clamp(min=1e-8)
        g = (wh.transpose(1, 2) @ w).pow(2)
        return g.sum(-1) - torch.diagonal(g, dim1=1, dim2=2)

    def summary(self) -> str:
        m = self.W.shape[1]
        rows = [f"{self.title} (m = {m})"]
        for s, k, dims in zip(self.sparsity, self.n_represented(), self.dimensionality()):
            rows.append(f"  S = {s:<6g} features represented: {k:>3}  "
                        f"(sum of dimensionalities {float(dims.sum()):.2f})")
        return "\n".join(rows)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        norms, dims, inter = self.norms(), self.dimensionality(), self.interference()
        return pd.DataFrame([{"sparsity": s, "feature": j, "importance": float(self.importance[j]),
                              "norm": float(norms[i, j]), "dimensionality": float(dims[i, j]),
                              "interference": float(inter[i, j])}
                             for i, s in enumerate(self.sparsity) for j in range(self.W.shape[2])])

    def plot(self) -> go.Figure:
        """``W^T W`` of each instance (top row) and feature norms coloured by interference (bottom row)."""
        from plotly.subplots import make_subplots

        k = len(self.sparsity)
        fig = make_subplots(rows=2, cols=k, subplot_titles=[f"S={s:g}" for s in self.sparsity] + [""] * k,
                            vertical_spacing=0.12)
        norms, inter = self.norms(), self.interference()
        for i in range(k):
            wtw = (self.W[i].T @ self.W[i]).tolist()
            fig.add_heatmap(z=wtw, zmin=-1, zmax=1, colorscale="RdBu", reversescale=True, showscale=i == 0,
                            row=1, col=i + 1)
            fig.add_bar(y=norms[i].tolist(), marker_color=inter[i].clamp(max=1).tolist(),
                        marker_colorscale="Viridis", showlegend=False, row=2, col=i + 1)
            fig.update_yaxes(autorange="reversed", row=1, col=i + 1)
        fig.update_layout(title="W^T W (top) and ||W_i|| coloured by interference (bottom)", height=650)
        return fig

    def dimensionality_figure(self) -> go.Figure:
        """Feature dimensionality against sparsity (Elhage et al.'s sticky fractions 1, 1/2, 2/5 ...)."""
        import plotly.graph_objects as go

        dims = self.dimensionality()
        fig = go.Figure()
        for i, s in enumerate(self.sparsity):
            fig.add_scatter(x=[1 / (1 - s) if s < 1 else float("inf")] * dims.shape[1], y=dims[i].tolist(),
                            mode="markers", name=f"S={s:g}", showlegend=False)
        m = self.W.shape[1]
        fig.add_scatter(x=[1 / (1 - s) for s in self.sparsity], y=[m / max(k, 1) for k in self.n_represented()],
                        mode="lines", name="m / features represented")
        fig.update_layout(title="Feature dimensionality", xaxis_type="log", xaxis_title="1 / (1 - S)",
                          yaxis_title="dimensionality")
        return fig


def toy_batch(n: int, batch: int, sparsity: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``[batch, instance, n]`` features: 0 with probability ``sparsity[instance]``, else U[0, 1].

    >>> x = toy_batch(5, 1000, torch.tensor([0.0, 0.9]), torch.Generator().manual_seed(0))
    >>> x.shape, float((x[:, 0] == 0).float().mean()), round(float((x[:, 1] == 0).float().mean()), 1)
    (torch.Size([1000, 2, 5]), 0.0, 0.9)
    """
    x = torch.rand(batch, len(sparsity), n, generator=gen)
    keep = torch.rand(batch, len(sparsity), n, generator=gen) >= sparsity[None, :, None]
    return x * keep


def train_toy_models(n_features: int = 20, m: int = 5, sparsities: Sequence[float] = (0.0, 0.7, 0.9, 0.97, 0.99),
                     importance_decay: float = 0.7, steps: int = 3000, batch: int = 1024, lr: float = 1e-3,
                     seed: int = 0) -> ToyModels:
    """Train one ReLU-output toy model per sparsity level (importance ``decay**i``).

    >>> r = train_toy_models(n_features=6, m=2, sparsities=[0.0, 0.9], steps=50, batch=64)
    >>> r.W.shape, len(r.n_represented()), bool(r.loss.isfinite().all())
    (torch.Size([2, 2, 6]), 2, True)
    """
    if not 0 < m < n_features:
        raise UncoverError(f"need 0 < m < n_features, got m={m}, n_features={n_features}")
    bad = [s for s in sparsities if not 0 <= s < 1]
    if bad:
        raise UncoverError(f"sparsities must be in [0, 1), got {bad}")
    g = torch.Generator().manual_seed(seed)
    k = len(sparsities)
    s = torch.tensor(list(sparsities), dtype=torch.float32)
    w = torch.nn.Parameter(torch.nn.init.xavier_normal_(torch.empty(k, m, n_features), generator=g))
    b = torch.nn.Parameter(torch.zeros(k, n_features))
    imp = importance_decay ** torch.arange(n_features, dtype=torch.float32)
    opt = torch.optim.Adam([w, b], lr=lr)
    loss_i = torch.zeros(k)
    with torch.enable_grad():
        for step in range(steps):
            x = toy_batch(n_features, batch, s, g)  # [batch, inst, n]
            h = torch.einsum("bin,imn->bim", x, w)
            out = torch.relu(torch.einsum("bim,imn->bin", h, w) + b)
            per = (imp * (x - out).pow(2)).mean(0).sum(-1)  # [inst]
            check_finite(step, loss=per, lr=lr, what="superposition training")
            opt.zero_grad(set_to_none=True)
            per.sum().backward()
            opt.step()
            loss_i = per.detach()
    check_finite(steps, params=[w, b], lr=lr, what="superposition training")
    return ToyModels(w.detach(), b.detach(), [float(v) for v in sparsities], imp, loss_i)
