"""A small TopK SAE (Gao et al. 2024) trained on first use and cached: the tour's features.

:func:`quick_sae` harvests a middle-layer residual stream over the embedded corpus, trains a
small TopK SAE for about a minute of CPU and stores it in the user cache (SAELens format,
written atomically) under a key made of the model's fingerprint and every setting, so the
second call loads it in milliseconds. It is a convenience for demos and tours; train a
proper SAE with :func:`~uncover.sae.train.train_sae` (see ``docs/sae.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from uncover.core.errors import UncoverError
from uncover.core.locks import cache_lock
from uncover.core.names import act_name

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel
    from uncover.sae.base import SAE


@dataclass(frozen=True)
class QuickSAESpec:
    """Settings of the quick SAE (all part of its cache key).

    Attributes:
        hook: the hook read (``None``: ``blocks.{n_layers // 2}.hook_resid_post``).
        expansion: ``d_sae = expansion * d_in``.
        k: active latents per token.
        n_blocks, block_len: training tokens (blocks of the embedded corpus's training split).
        steps, batch_size, lr: optimisation (Adam, with warm-up and final decay).
        seed: initialisation and shuffling seed.
    """

    hook: str | None = None
    expansion: int = 4
    k: int = 32
    n_blocks: int = 192
    block_len: int = 64
    steps: int = 500
    batch_size: int = 512
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("expansion", "k", "n_blocks", "block_len", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UncoverError(f"QuickSAESpec.{name} must be positive, got {getattr(self, name)}")


def fingerprint(model: HookedModel) -> str:
    """A short hash identifying ``model``'s weights (name, shapes and a few embedding values).

    >>> from uncover.sae.quick import fingerprint
    >>> len(fingerprint(model))
    12
    """
    c = model.cfg
    probe = model.W_E.detach()[:4, :8].float().flatten().tolist()
    key = json.dumps([model.name, c.n_layers, c.d_model, c.d_vocab, [round(v, 6) for v in probe]])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def cache_path(model: HookedModel, spec: QuickSAESpec, tokens: torch.Tensor | None = None) -> Path:
    """Where :func:`quick_sae` keeps the SAE of ``model`` with ``spec`` (and training ``tokens``)."""
    from uncover.models.load import cache_dir

    h = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    if tokens is not None:
        h.update(tokens.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    key = h.hexdigest()[:10]
    hook = (spec.hook or "mid").replace(".", "_")
    return cache_dir() / "sae" / fingerprint(model) / f"{hook}-topk{spec.k}-{key}"


def quick_sae(model: HookedModel, spec: QuickSAESpec | None = None, *, tokens: torch.Tensor | None = None,
              cache: bool = True, progress: bool = True) -> SAE:
    """A small TopK SAE on ``model`` at ``spec.hook``: loaded from the cache, else trained (≈1 CPU-minute).

    The SAE reads raw activations at its hook (``sae.cfg.hook_name``); attach it with
    :func:`~uncover.sae.attach.attach_sae` or inspect it with
    :func:`~uncover.sae.dashboard.feature_dashboard`. ``tokens``: training blocks
    ``[n_blocks, pos]`` (default: ``spec.n_blocks`` blocks of the embedded corpus).

    >>> from uncover.sae.quick import quick_sae
    >>> sae = quick_sae(model)  # doctest: +SKIP
    >>> sae.cfg.hook_name, sae.cfg.d_sae, sae.cfg.k  # doctest: +SKIP
    ('blocks.15.hook_resid_post', 2304, 32)
    """
    from uncover.sae.base import SAE

    spec = spec or QuickSAESpec()
    hook = spec.hook or act_name("resid_post", model.cfg.n_layers // 2)
    model.site(hook)
    path = cache_path(model, spec, tokens)
    if cache and (path / "cfg.json").is_file():
        return SAE.load(path)
    if cache:  # one process trains it; others sharing the cache wait for it, then load it
        with cache_lock(path):
            if (path / "cfg.json").is_file():
                return SAE.load(path)
            return _train_quick(model, spec, hook, path, tokens, progress)
    return _train_quick(model, spec, hook, None, tokens, progress)


def _train_quick(model: HookedModel, spec: QuickSAESpec, hook: str, path: Path | None,
                 tokens: torch.Tensor | None, progress: bool) -> SAE:
    """Train the quick SAE; install it at ``path`` unless ``None``."""
    from uncover.data.corpus import token_blocks
    from uncover.sae.base import SAEConfig
    from uncover.sae.store import TensorSource, harvest
    from uncover.sae.topk import TopKSAE
    from uncover.sae.train import TrainConfig, train_sae

    if tokens is None:
        tokens = token_blocks(model, block_len=spec.block_len)
        if len(tokens) < spec.n_blocks:
            raise UncoverError(f"the corpus has only {len(tokens)} blocks of {spec.block_len} tokens; "
                               f"lower n_blocks (got {spec.n_blocks})")
        tokens = tokens[: spec.n_blocks]
    acts = harvest(model, hook, tokens)
    d_in = acts.shape[-1]
    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=spec.expansion * d_in, architecture="topk", k=spec.k,
                            hook_name=hook, model_name=model.name))
    cfg = TrainConfig(steps=spec.steps, lr=spec.lr, warmup_steps=min(50, spec.steps // 10),
                      log_every=max(1, spec.steps // 10), checkpoint_every=0, seed=spec.seed)
    with torch.enable_grad():
        sae = train_sae(sae, TensorSource(acts, spec.batch_size, seed=spec.seed), cfg, progress=progress).sae
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
        try:
            sae.save(tmp)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return sae
