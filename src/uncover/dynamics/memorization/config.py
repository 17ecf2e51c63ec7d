"""Configuration of a memorization run: a tiny byte-level language model trained on the
embedded corpus with injected canaries and duplicated sequences (Carlini et al. 2019 canaries;
Carlini et al. 2023 "Quantifying memorization across neural language models")."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from uncover.core.errors import UncoverError


class MemConfigError(UncoverError):
    """An invalid memorization configuration value."""


@dataclass(frozen=True)
class MemConfig:
    """Data, model and training of a memorization run; validated on construction.

    >>> MemConfig().dup_counts
    (1, 4, 16, 64)
    >>> try:
    ...     MemConfig(k_prefix=80)
    ... except MemConfigError as e:
    ...     print(e)
    k_prefix (80) must be between 1 and seq_len - 1 (63)
    """

    seq_len: int = 64
    """Tokens (bytes) per training sequence."""
    n_corpus: int = 512
    """Ordinary corpus sequences seen once per epoch (the "members" of membership inference)."""
    dup_counts: tuple[int, ...] = (1, 4, 16, 64)
    """How many copies of each injected sequence the training set holds."""
    per_count: int = 8
    """Injected sequences per duplicate count, for canaries and for duplicated corpus text each."""
    n_heldout: int = 64
    """Held-out corpus sequences (never trained on: the "non-members")."""
    n_layers: int = 2
    """Decoder blocks of the GPT-2 model."""
    d_model: int = 96
    """Residual width."""
    n_heads: int = 4
    """Attention heads."""
    d_mlp: int = 384
    """MLP neurons per block."""
    lr: float = 2e-3
    """AdamW learning rate (cosine decay to 10 % after a 50-step warm-up)."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    batch_size: int = 32
    """Sequences per step (sampled without replacement within an epoch)."""
    steps: int = 800
    """Optimisation steps."""
    eval_every: int = 100
    """Steps between memorization measurements of the tracked sequences."""
    k_prefix: int = 32
    """Prefix length ``k`` of k-extractable memorization; the suffix is the rest of the sequence."""
    seed: int = 0
    """Seed of the data (canaries, choice of sequences, order) and of the initialisation."""

    def __post_init__(self) -> None:
        for name in ("seq_len", "n_corpus", "per_count", "n_heldout", "n_layers", "d_model", "n_heads", "d_mlp",
                     "batch_size", "steps", "eval_every"):
            if getattr(self, name) < 1:
                raise MemConfigError(f"{name} must be positive, not {getattr(self, name)}")
        if not 1 <= self.k_prefix < self.seq_len:
            raise MemConfigError(f"k_prefix ({self.k_prefix}) must be between 1 and seq_len - 1 ({self.seq_len - 1})")
        if not self.dup_counts or min(self.dup_counts) < 1:
            raise MemConfigError(f"dup_counts must be positive integers, not {self.dup_counts}")
        if self.d_model % self.n_heads:
            raise MemConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        object.__setattr__(self, "dup_counts", tuple(int(c) for c in self.dup_counts))

    def replace(self, **changes: Any) -> MemConfig:
        """A validated copy with ``changes``; unknown fields are named.

        >>> MemConfig().replace(steps=10).steps
        10
        """
        names = {f.name for f in fields(self)}
        bad = sorted(set(changes) - names)
        if bad:
            raise MemConfigError(f"unknown field(s) {', '.join(bad)}; valid: {', '.join(sorted(names))}")
        return MemConfig(**{**asdict(self), **changes})

    def to_json(self) -> str:
        """The config as JSON."""
        return json.dumps(asdict(self), indent=1)
