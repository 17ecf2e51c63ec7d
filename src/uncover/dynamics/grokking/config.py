"""Configuration of a grokking run (Nanda et al. 2023, "Progress measures for grokking via
mechanistic interpretability": one-layer transformer on modular arithmetic)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from uncover.core.errors import UncoverError

OPS = ("+", "-", "*", "/")
"""Valid operations: ``a op b mod p`` (``/`` multiplies by the modular inverse of ``b``; ``b != 0``)."""


class GrokConfigError(UncoverError):
    """An invalid grokking configuration value."""


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


@dataclass(frozen=True)
class GrokConfig:
    """Everything that defines a grokking run; validated on construction.

    >>> GrokConfig().p, GrokConfig().n_heads
    (113, 4)
    >>> try:
    ...     GrokConfig(op="%")
    ... except GrokConfigError as e:
    ...     print(e)
    unknown op '%'; valid: +, -, *, /
    """

    p: int = 113
    """The prime modulus; tokens ``0..p-1`` are numbers and token ``p`` is ``=``."""
    op: str = "+"
    """The operation: ``+``, ``-``, ``*`` or ``/``."""
    train_frac: float = 0.3
    """Fraction of all ``(a, b)`` pairs used for training (the rest is the test set)."""
    d_model: int = 128
    """Residual stream width."""
    n_heads: int = 4
    """Attention heads (``d_head = d_model / n_heads``)."""
    d_mlp: int = 512
    """MLP hidden width (ReLU neurons)."""
    lr: float = 1e-3
    """AdamW learning rate (constant after ``warmup`` steps)."""
    weight_decay: float = 1.0
    """AdamW decoupled weight decay; 0 gives memorization without grokking."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.98
    """AdamW second-moment decay."""
    warmup: int = 10
    """Linear learning-rate warm-up steps (Nanda et al. use 10)."""
    steps: int = 25_000
    """Full-batch optimisation steps."""
    seed: int = 0
    """Seed of the data split and the initialisation."""
    init_scale: float = 4.0
    """Multiplier on GPT-2's initial weights (std 0.02). The default 4 is about Nanda et al.'s
    initialisation (std 1/sqrt(d_model) = 0.088 for d_model 128): the model memorizes at once and
    generalises only once weight decay has shrunk the weights, the grokking delay (at p = 113: test
    accuracy 0.01 until step ~11 000, 0.98 at 14 500). At 1 train and test accuracy rise together
    (Liu et al. 2023, "Omnigrok": the initial weight norm sets the delay)."""
    eval_every: int = 100
    """Steps between metric rows (train/test loss and accuracy, weight norm, Gini)."""
    snapshot_every: int = 250
    """Steps between weight snapshots (used for progress measures after training); 0 = none."""
    checkpoint_every: int = 1000
    """Steps between resumable checkpoints (weights, optimizer state, RNG); 0 = only the last."""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise GrokConfigError(f"unknown op {self.op!r}; valid: {', '.join(OPS)}")
        if not _is_prime(self.p) or self.p < 5:
            raise GrokConfigError(f"p must be a prime ≥ 5 (e.g. 53, 97, 113), not {self.p}")
        if not 0.0 < self.train_frac < 1.0:
            raise GrokConfigError(f"train_frac must be between 0 and 1 (exclusive), not {self.train_frac}")
        if self.d_model % self.n_heads:
            raise GrokConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        for name in ("d_model", "n_heads", "d_mlp", "steps", "eval_every"):
            if getattr(self, name) < 1:
                raise GrokConfigError(f"{name} must be positive, not {getattr(self, name)}")
        for name in ("warmup", "snapshot_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise GrokConfigError(f"{name} must be ≥ 0, not {getattr(self, name)}")
        if self.init_scale <= 0:
            raise GrokConfigError(f"init_scale must be positive, not {self.init_scale}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise GrokConfigError(f"need lr > 0 and weight_decay ≥ 0 (got {self.lr}, {self.weight_decay})")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise GrokConfigError(f"betas must lie in [0, 1), not ({self.beta1}, {self.beta2})")

    def replace(self, **changes: Any) -> GrokConfig:
        """A copy with ``changes``, validated; unknown fields are named.

        >>> GrokConfig().replace(p=53).p
        53
        """
        names = {f.name for f in fields(self)}
        bad = sorted(set(changes) - names)
        if bad:
            raise GrokConfigError(f"unknown field(s) {', '.join(bad)}; valid: {', '.join(sorted(names))}")
        return GrokConfig(**{**asdict(self), **changes})

    def to_json(self) -> str:
        """The config as JSON (round-trips through :meth:`from_json`)."""
        return json.dumps(asdict(self), indent=1)

    @staticmethod
    def from_json(text: str) -> GrokConfig:
        """Inverse of :meth:`to_json`.

        >>> GrokConfig.from_json(GrokConfig(p=53).to_json()) == GrokConfig(p=53)
        True
        """
        values = json.loads(text)
        values.setdefault("init_scale", 1.0)  # runs saved before the field existed used GPT-2's init
        return GrokConfig().replace(**values)

    @staticmethod
    def load(path: str | Path) -> GrokConfig:
        """Read ``config.json`` from a run directory (or the file itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise GrokConfigError(f"{path}: no grokking config here (expected a run directory with config.json)")
        return GrokConfig.from_json(path.read_text())
