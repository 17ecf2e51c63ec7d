"""A small set of transcoders trained on first use and cached: the attribution graphs' default features.

:func:`quick_transcoders` harvests MLP inputs and outputs over the embedded corpus, trains a
per-layer TopK skip transcoder for each chosen layer (or one CLT) and stores the set in the user
cache under a key of the model's fingerprint and every setting (written atomically), so later
calls load it in milliseconds. A demo-sized set: its error nodes are large; train a proper one
with ``uncover transcoder train`` (``docs/transcoders.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uncover.core.errors import UncoverError
from uncover.core.locks import cache_lock

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel
    from uncover.transcoders.sets import TranscoderSet


@dataclass(frozen=True)
class QuickTranscoderSpec:
    """Settings of the quick transcoders (all part of the cache key).

    Attributes:
        layers: covered layers (``None``: every layer).
        cross_layer: one CLT instead of per-layer transcoders.
        expansion, k, skip: features per layer (``expansion * d_model``), active per token, skip connection.
        n_blocks, block_len: training tokens (blocks of the embedded corpus's training split).
        steps, batch_size, lr, seed: optimisation.
    """

    layers: tuple[int, ...] | None = None
    cross_layer: bool = False
    expansion: int = 2
    k: int = 16
    skip: bool = True
    n_blocks: int = 64
    block_len: int = 64
    steps: int = 300
    batch_size: int = 256
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("expansion", "k", "n_blocks", "block_len", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UncoverError(f"QuickTranscoderSpec.{name} must be positive, got {getattr(self, name)}")


def cache_path(model: HookedModel, spec: QuickTranscoderSpec) -> Path:
    """Where :func:`quick_transcoders` keeps ``model``'s set for ``spec``."""
    from uncover.models.load import cache_dir
    from uncover.sae.quick import fingerprint

    key = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "transcoders" / fingerprint(model) / f"{'clt' if spec.cross_layer else 'plt'}-{key}"


def quick_transcoders(model: HookedModel, spec: QuickTranscoderSpec | None = None, *, cache: bool = True,
                      progress: Any = True) -> TranscoderSet:
    """``model``'s quick transcoder set: loaded from the cache, else trained (minutes of CPU for every layer).

    >>> from uncover.transcoders.quick import QuickTranscoderSpec, quick_transcoders
    >>> ts = quick_transcoders(model, QuickTranscoderSpec(layers=(3,), steps=10), progress=False)
    >>> ts.layers, ts.d_sae(3)
    ([3], 1152)
    """
    from uncover.transcoders.sets import TranscoderSet

    spec = spec or QuickTranscoderSpec()
    layers = list(spec.layers) if spec.layers is not None else list(range(model.cfg.n_layers))
    path = cache_path(model, spec)
    if cache and path.is_dir():
        return TranscoderSet.load(path)
    if not cache:
        return _train_quick(model, spec, layers, None, progress)
    with cache_lock(path):  # one process trains the set; others sharing the cache wait for it, then load it
        if path.is_dir():
            return TranscoderSet.load(path)
        return _train_quick(model, spec, layers, path, progress)


def _train_quick(model: HookedModel, spec: QuickTranscoderSpec, layers: list[int], path: Path | None,
                 progress: Any) -> TranscoderSet:
    """Train the quick set; install it at ``path`` unless ``None``."""
    from uncover.data.corpus import token_blocks
    from uncover.sae.train import TrainConfig
    from uncover.transcoders.train import train_transcoders

    blocks = token_blocks(model, block_len=spec.block_len)
    if len(blocks) < spec.n_blocks:
        raise UncoverError(f"the corpus has only {len(blocks)} blocks of {spec.block_len} tokens; lower n_blocks")
    cfg = TrainConfig(steps=spec.steps, lr=spec.lr, warmup_steps=min(50, spec.steps // 10),
                      log_every=max(1, spec.steps // 10), checkpoint_every=0, seed=spec.seed)
    tset = train_transcoders(model, layers, blocks[: spec.n_blocks], cfg, cross_layer=spec.cross_layer,
                             expansion=spec.expansion, k=spec.k, skip=spec.skip, batch_size=spec.batch_size,
                             progress=progress).transcoders
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
        try:
            tset.save(tmp / "set")
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp / "set", path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tset
