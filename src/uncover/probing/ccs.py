"""Contrast-consistent search (Burns et al. 2022, "Discovering Latent Knowledge in Language
Models Without Supervision").

Each question becomes a contrast pair: ``x⁺`` (answered "Yes") and ``x⁻`` (answered "No").
Activations of each side are normalised separately (mean removed, divided by the
per-dimension standard deviation), so that the probe cannot read the answer token itself.
A linear probe ``p(x) = σ(w·x + b)`` is trained without labels to be

- consistent: ``p(x⁺) ≈ 1 − p(x⁻)``, loss ``(p(x⁺) − (1 − p(x⁻)))²``;
- confident: loss ``min(p(x⁺), p(x⁻))²``;

from several random starts (all trained at once as a batch of probes), keeping the lowest
loss. With few pairs and many dimensions (``n < d``) the losses can be driven to zero by
directions that do not generalise, so by default the probe works in the top ``pca``
principal components of the normalised training activations (both sides together);
on the embedded model this takes held-out accuracy from chance to above 0.9.
The prediction is ``½(p(x⁺) + 1 − p(x⁻)) > ½``. CCS cannot know which end of its
direction means "true", so the sign is fixed on the *training* labels only, for
reporting; accuracy is then measured on held-out pairs, next to a supervised logistic
probe on the same normalised differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from uncover.core.diverge import check_finite
from uncover.core.errors import UncoverError
from uncover.core.names import HookName
from uncover.core.results import Result
from uncover.data.activations import ActivationSet
from uncover.probing.control import folds_of
from uncover.probing.linear import fit_probe, small_ops


@dataclass
class CCSProbe:
    """A trained CCS probe.

    Attributes:
        w: ``[d]`` weights on normalised activations; b: bias.
        mean_pos, std_pos, mean_neg, std_neg: ``[d]`` per-side normalisation (from training data).
        sign: ``+1`` or ``-1``: whether ``p > ½`` means "the positive answer is true".
        loss: the final unsupervised loss of the kept restart.
    """

    w: torch.Tensor
    b: float
    mean_pos: torch.Tensor
    std_pos: torch.Tensor
    mean_neg: torch.Tensor
    std_neg: torch.Tensor
    sign: int
    loss: float
    basis: torch.Tensor | None = None
    """``[d, k]`` principal directions the probe works in, or ``None`` (all dimensions)."""

    def probs(self, x_pos: torch.Tensor, x_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``p(x⁺), p(x⁻)``, each ``[n]``."""
        zp = (x_pos.float() - self.mean_pos) / self.std_pos
        zn = (x_neg.float() - self.mean_neg) / self.std_neg
        if self.basis is not None:
            zp, zn = zp @ self.basis, zn @ self.basis
        return torch.sigmoid(zp @ self.w + self.b), torch.sigmoid(zn @ self.w + self.b)

    def predict(self, x_pos: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
        """``[n]`` 1 where the positive answer is predicted true (sign applied)."""
        pp, pn = self.probs(x_pos, x_neg)
        conf = 0.5 * (pp + 1 - pn)
        pred = (conf > 0.5).long()
        return pred if self.sign > 0 else 1 - pred

    def score(self, x_pos: torch.Tensor, x_neg: torch.Tensor, labels: torch.Tensor) -> float:
        """Accuracy against ``labels`` (1: the positive answer is true)."""
        return float((self.predict(x_pos, x_neg) == labels).float().mean())


def _norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(0), x.std(0).clamp_min(1e-6)


def fit_ccs(
    x_pos: torch.Tensor, x_neg: torch.Tensor, *, labels: torch.Tensor | None = None, restarts: int = 10,
    steps: int = 500, lr: float = 1e-2, weight_decay: float = 0.01, pca: int | None = 8, seed: int = 0,
) -> CCSProbe:
    """Train CCS on contrast activations ``x_pos, x_neg [n, d]`` without labels.

    ``labels`` (optional) only fix the sign of the result. ``pca``: number of principal
    components to work in (``None``: all dimensions).

    >>> g = torch.Generator().manual_seed(0)
    >>> truth = torch.randint(0, 2, (100,), generator=g)
    >>> base = torch.randn(100, 6, generator=g)
    >>> x_pos = base + 3 * torch.outer(2.0 * truth - 1, torch.eye(6)[0])
    >>> x_neg = base - 3 * torch.outer(2.0 * truth - 1, torch.eye(6)[0])
    >>> probe = fit_ccs(x_pos, x_neg, labels=truth)
    >>> probe.score(x_pos, x_neg, truth)
    1.0
    """
    if x_pos.shape != x_neg.shape or x_pos.dim() != 2:
        raise UncoverError(f"contrast activations must both be [n, d], got {tuple(x_pos.shape)} and "
                           f"{tuple(x_neg.shape)}")
    if x_pos.shape[0] < 2:
        raise UncoverError(f"CCS needs at least 2 pairs, got {x_pos.shape[0]}")
    if restarts < 1:
        raise UncoverError(f"restarts must be at least 1, got {restarts}")
    mp, sp = _norm(x_pos.float())
    mn, sn = _norm(x_neg.float())
    zp, zn = (x_pos.float() - mp) / sp, (x_neg.float() - mn) / sn
    basis = None
    if pca is not None and pca < zp.shape[1]:
        both = torch.cat([zp, zn])
        basis = torch.linalg.svd(both - both.mean(0), full_matrices=False).Vh[:pca].T  # [d, k]
        zp, zn = zp @ basis, zn @ basis
    d = zp.shape[1]
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(restarts, d, generator=g) / d**0.5).requires_grad_(True)  # [restart, d]
    b = torch.zeros(restarts, requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)

    def losses() -> torch.Tensor:
        pp = torch.sigmoid(zp @ w.T + b)  # [n, restart]
        pn = torch.sigmoid(zn @ w.T + b)
        return ((pp - (1 - pn)) ** 2).mean(0) + (torch.minimum(pp, pn) ** 2).mean(0)

    with torch.enable_grad(), small_ops():
        for step in range(steps):
            opt.zero_grad()
            loss = losses().sum()
            check_finite(step, loss=loss, lr=lr, what="CCS training")
            loss.backward()
            opt.step()
    with torch.no_grad():
        final = losses()
    check_finite(steps, loss=final, params=[w, b], lr=lr, what="CCS training")
    k = int(final.argmin())
    probe = CCSProbe(w[k].detach().clone(), float(b[k].detach()), mp, sp, mn, sn, 1, float(final[k]), basis)
    if labels is not None and probe.score(x_pos, x_neg, labels) < 0.5:
        probe.sign = -1
    return probe


@dataclass
class CCSResult(Result):
    """CCS and a supervised probe per hook, on held-out pairs.

    Attributes:
        hooks: the hooks, in order.
        ccs: held-out CCS accuracy per hook (sign fixed on training labels).
        supervised: held-out accuracy of a logistic probe on the normalised differences.
        loss: the CCS loss per hook.
        n_train, n_test: numbers of pairs.
        dataset: dataset name.
    """

    hooks: list[str]
    ccs: list[float]
    supervised: list[float]
    loss: list[float]
    n_train: int
    n_test: int
    dataset: str = ""

    @property
    def title(self) -> str:
        return f"CCS vs supervised probe on held-out pairs: {self.dataset}"

    @property
    def layers(self) -> list[int]:
        return [HookName.parse(h).layer or 0 for h in self.hooks]

    def summary(self) -> str:
        i = max(range(len(self.hooks)), key=lambda j: self.ccs[j])
        lines = [f"{self.title} ({self.n_train} train / {self.n_test} test pairs); best CCS "
                 f"{self.hooks[i]}: {self.ccs[i]:.3f} (supervised {self.supervised[i]:.3f})"]
        for h, c, s, lo in zip(self.hooks, self.ccs, self.supervised, self.loss):
            lines.append(f"  {h:32s} CCS {c:.3f}  supervised {s:.3f}  loss {lo:.4f}")
        return "\n".join(lines)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"hook": self.hooks, "layer": self.layers, "ccs": self.ccs,
                             "supervised": self.supervised, "ccs_loss": self.loss})

    def plot(self):
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_trace(go.Scatter(x=self.layers, y=self.ccs, mode="lines+markers", name="CCS (unsupervised)"))
        fig.add_trace(go.Scatter(x=self.layers, y=self.supervised, mode="lines+markers", name="logistic (supervised)"))
        fig.add_hline(y=0.5, line_dash="dash", line_color="grey", annotation_text="chance")
        fig.update_layout(title=self.title, xaxis_title="layer", yaxis_title="held-out accuracy",
                          yaxis_range=[0, 1.05])
        return fig


def ccs_layers(
    pos: ActivationSet, neg: ActivationSet, labels: torch.Tensor | Sequence[int], hooks: Sequence[str] | None = None,
    *, groups: Sequence[str] | None = None, test_fraction: float = 0.5, restarts: int = 10, steps: int = 500,
    pca: int | None = 8, seed: int = 0, dataset: str = "",
) -> CCSResult:
    """Train CCS per hook on a training split of the pairs and test it on the rest (pairs of a group stay together).

    >>> from uncover.data.activations import collect, resid_hooks
    >>> from uncover.data.labelled import truth_pairs
    >>> pairs = truth_pairs(model)
    >>> hooks = resid_hooks(model, [8, 16])
    >>> pos = collect(model, pairs.positive, hooks, progress=False)
    >>> neg = collect(model, pairs.negative, hooks, progress=False)
    >>> r = ccs_layers(pos, neg, pairs.labels, groups=pairs.groups, restarts=2, steps=100)  # doctest: +SKIP
    >>> type(r).__name__  # doctest: +SKIP
    'CCSResult'
    """
    y = torch.as_tensor(list(labels) if not isinstance(labels, torch.Tensor) else labels, dtype=torch.long)
    n = len(pos)
    if n == 0:
        raise UncoverError("empty dataset: no contrast pairs")
    if len(neg) != n or y.shape[0] != n:
        raise UncoverError(f"{n} positive, {len(neg)} negative activations and {y.shape[0]} labels")
    if not 0 < test_fraction < 1:
        raise UncoverError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    k = max(2, round(1 / test_fraction))
    test = folds_of(n, k, groups=groups, seed=seed)[0]
    train = torch.ones(n, dtype=torch.bool)
    train[test] = False
    hooks = pos.hooks if hooks is None else list(hooks)
    accs, sup, loss = [], [], []
    for h in hooks:
        xp, xn = pos[h].flatten(1), neg[h].flatten(1)
        probe = fit_ccs(xp[train], xn[train], labels=y[train], restarts=restarts, steps=steps, pca=pca,
                         seed=seed)
        accs.append(probe.score(xp[test], xn[test], y[test]))
        loss.append(probe.loss)
        dp = (xp - probe.mean_pos) / probe.std_pos - (xn - probe.mean_neg) / probe.std_neg
        if y[train].unique().numel() < 2:
            sup.append(float("nan"))
        else:
            sup.append(fit_probe(dp[train], y[train]).score(dp[test], y[test]))
    return CCSResult(hooks, accs, sup, loss, int(train.sum()), int(test.numel()), dataset)
