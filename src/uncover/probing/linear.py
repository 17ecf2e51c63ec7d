"""Probes: logistic regression and a small MLP on activation vectors (torch, no scikit-learn).

A probe (Alain & Bengio 2016; Belinkov 2022 survey) is a small classifier trained on frozen
activations ``X [n, d]`` to predict labels ``y [n]``. Features are standardised with the
training set's mean and standard deviation; the logistic probe is multinomial
(softmax) regression with an L2 penalty, fit by full-batch L-BFGS; the MLP probe has one
hidden ReLU layer and is trained with Adam. A binary logistic probe has a *direction*
in the raw activation space (``w / std``, unit length) usable for steering or ablation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from uncover.core.diverge import check_finite
from uncover.core.errors import UncoverError
from uncover.core.threads import torch_threads

KINDS = ("logistic", "mlp")


def small_ops() -> contextlib.AbstractContextManager[None]:
    """Run tiny optimisation loops on one CPU thread, restoring the thread count after."""
    return torch_threads(1)


@dataclass
class Probe:
    """A trained probe.

    Attributes:
        kind: ``"logistic"`` or ``"mlp"``.
        mean, std: ``[d]`` standardisation of the inputs.
        net: the classifier on standardised inputs (logits ``[n, n_classes]``).
        n_classes: number of classes.
    """

    kind: str
    mean: torch.Tensor
    std: torch.Tensor
    net: nn.Module
    n_classes: int

    @torch.no_grad()
    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """``[n, n_classes]`` logits for ``X [n, d]``."""
        return self.net((X.float() - self.mean) / self.std)

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """``[n]`` predicted labels."""
        return self.logits(X).argmax(-1)

    def score(self, X: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy on ``(X, y)``."""
        return float((self.predict(X) == y).float().mean())

    @property
    def direction(self) -> torch.Tensor:
        """``[d]`` unit vector (raw activation space) along which class 1's logit grows against class 0's.

        Only for binary logistic probes: ``(W[1] - W[0]) / std``, normalised.
        """
        if self.kind != "logistic" or self.n_classes != 2:
            raise UncoverError(f"a direction needs a binary logistic probe, this is {self.kind} with "
                               f"{self.n_classes} classes")
        w = self.net.weight.detach()
        d = (w[1] - w[0]) / self.std
        return d / d.norm()


def _check(X: torch.Tensor, y: torch.Tensor) -> int:
    if X.dim() != 2:
        raise UncoverError(f"probe inputs must be [n, d], got shape {tuple(X.shape)}")
    if X.shape[0] != y.shape[0]:
        raise UncoverError(f"{X.shape[0]} activation rows but {y.shape[0]} labels")
    if X.shape[0] == 0:
        raise UncoverError("empty dataset: no rows to train a probe on")
    if not bool(torch.isfinite(X).all()):
        raise UncoverError("activations contain NaN or inf")
    classes = y.unique()
    if classes.numel() < 2:
        raise UncoverError(f"need at least two classes to train a probe, got only {classes.tolist()}")
    return int(y.max()) + 1


def fit_probe(
    X: torch.Tensor, y: torch.Tensor, *, kind: str = "logistic", l2: float = 1e-2, hidden: int = 64,
    steps: int = 200, seed: int = 0,
) -> Probe:
    """Train a probe on ``X [n, d]``, ``y [n]`` (labels ``0 .. n_classes - 1``).

    ``l2``: penalty on the weights (per example, as in the mean loss); ``hidden`` and
    ``steps`` are for the MLP.

    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(200, 5, generator=g)
    >>> y = (X[:, 2] > 0).long()
    >>> p = fit_probe(X, y)
    >>> p.score(X, y) > 0.95, int(p.direction.abs().argmax())
    (True, 2)
    """
    if kind not in KINDS:
        raise UncoverError(f"unknown probe kind {kind!r}; valid: {', '.join(KINDS)}")
    n_classes = _check(X, y)
    X = X.float()
    mean, std = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mean) / std
    with small_ops():
        net = _train(Z, y, kind, n_classes, l2, hidden, steps, seed)
    return Probe(kind, mean, std, net, n_classes)


def _train(Z: torch.Tensor, y: torch.Tensor, kind: str, n_classes: int, l2: float, hidden: int, steps: int,
           seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "logistic":
        net: nn.Module = nn.Linear(Z.shape[1], n_classes)
        nn.init.zeros_(net.weight)
        nn.init.zeros_(net.bias)
        opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(Z), y) + l2 * net.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        check_finite(0, params=net.parameters(), what="probe training", fix="check the activations are finite")
    else:
        net = nn.Sequential(nn.Linear(Z.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
        opt2 = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=l2)
        with torch.enable_grad():
            for step in range(steps):
                opt2.zero_grad()
                loss = nn.functional.cross_entropy(net(Z), y)
                check_finite(step, loss=loss, lr=1e-2, what="probe training", fix="check the activations are finite")
                loss.backward()
                opt2.step()
    return net.eval()
