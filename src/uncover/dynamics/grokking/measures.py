"""Progress measures of grokking over training (Nanda et al. 2023, section 5).

For each weight snapshot: the restricted loss (logits keep only the key frequencies of
the answer coordinate ``a ± b``, on all pairs), the excluded loss (key frequencies removed, on
the training pairs), the Gini sparsity of the embedding and of the neuron-to-logit map in the
Fourier basis, and the total weight norm. For ``*`` and ``/`` the basis is over discrete
logarithms (:mod:`~uncover.dynamics.grokking.groups`) and the restricted / excluded losses are
taken over the pairs inside the multiplicative group (no zero token). The key frequencies come
from the final model's neurons. Phases (memorization, circuit formation, cleanup) are read off
the accuracy curves.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn.functional as F

from uncover.dynamics.grokking.fourier import (
    embed_freq_norms,
    embed_gini,
    excluded_logits,
    grid_run,
    key_directions,
    key_frequencies,
    logit_map_gini,
    restricted_logits,
)
from uncover.dynamics.grokking.groups import group_pairs
from uncover.dynamics.grokking.result import GrokkingResult

if TYPE_CHECKING:
    from uncover.dynamics.grokking.train import GrokRun


def phases(metrics: pd.DataFrame, mem_acc: float = 0.99, rise_acc: float = 0.1, done_acc: float = 0.99,
           ) -> dict[str, tuple[int, int]]:
    """Phase boundaries from the accuracy curves.

    memorization: step 0 until train accuracy first reaches ``mem_acc``; circuit formation: until
    test accuracy first exceeds its value at the end of memorization by ``rise_acc`` (the start of
    the rise; with test accuracy near chance at memorization, simply ``rise_acc``); cleanup: until test
    accuracy first reaches ``done_acc``. A phase that has not ended runs to the last step; phases
    that never started are absent.

    >>> m = pd.DataFrame({"step": [0, 100, 200, 300, 400], "train_acc": [0, 1, 1, 1, 1],
    ...                   "test_acc": [0, 0, 0.05, 0.5, 1.0]})
    >>> phases(m)
    {'memorization': (0, 100), 'circuit formation': (100, 300), 'cleanup': (300, 400)}
    """
    steps = metrics["step"].tolist()
    last = int(steps[-1])

    def first(col: str, level: float, after: int) -> int | None:
        hit = metrics[(metrics[col] >= level) & (metrics["step"] >= after)]["step"]
        return int(hit.iloc[0]) if len(hit) else None

    out: dict[str, tuple[int, int]] = {}
    t1 = first("train_acc", mem_acc, 0)
    out["memorization"] = (0, t1 if t1 is not None else last)
    if t1 is None:
        return out
    at_mem = float(metrics.loc[metrics["step"] == t1, "test_acc"].iloc[0])
    t2 = first("test_acc", min(at_mem + rise_acc, done_acc), t1)
    out["circuit formation"] = (t1, t2 if t2 is not None else last)
    if t2 is None or t2 == last:
        return out
    t3 = first("test_acc", done_acc, t2)
    out["cleanup"] = (t2, t3 if t3 is not None else last)
    return out


@torch.no_grad()
def snapshot_measures(model: object, run: GrokRun, directions: torch.Tensor) -> dict[str, float]:
    """Restricted/excluded loss, Gini measures and weight norm of one model state."""
    cfg, data = run.cfg, run.data
    grid, _ = grid_run(model, cfg)  # [p*p, p], rows a*p+b
    rows = data.tokens[:, 0] * cfg.p + data.tokens[:, 1]  # the data's pairs on the grid
    inside = group_pairs(cfg.p, cfg.op)[rows]  # [n] pairs the Fourier analysis covers
    logits, labels, tr = grid[rows].double(), data.labels, data.is_train
    lg, dirs = logits[inside], directions[rows][inside]
    restricted = restricted_logits(lg, dirs)
    excluded = excluded_logits(lg, dirs)
    tr_in = tr[inside]
    return {
        "restricted_loss": float(F.cross_entropy(restricted, labels[inside])),
        "excluded_loss": float(F.cross_entropy(excluded[tr_in], labels[inside][tr_in])),
        "full_loss": float(F.cross_entropy(logits, labels)),
        "embed_gini": embed_gini(model, cfg),
        "logit_gini": logit_map_gini(model, cfg),
        "weight_norm": math.sqrt(sum(float(p.double().pow(2).sum()) for p in model.parameters())),
    }


def progress_measures(run: GrokRun, key_freqs: list[int] | None = None, max_snapshots: int | None = None,
                      ) -> GrokkingResult:
    """Progress measures over every weight snapshot of ``run`` (see the module docstring).

    Works for all four operations (``*`` and ``/`` in the discrete-log basis). ``key_freqs``
    default to :func:`~uncover.dynamics.grokking.fourier.key_frequencies` of the final model;
    ``max_snapshots`` thins the snapshots evenly (first and last kept).

    >>> from uncover.dynamics.grokking import GrokConfig, train
    >>> run = train(GrokConfig(p=7, d_model=8, n_heads=2, d_mlp=16, steps=20, eval_every=10), progress=False)
    >>> r = progress_measures(run)
    >>> r.measures["step"].tolist()
    [0, 20]
    """
    cfg = run.cfg
    keys = key_frequencies(run.model, cfg) if key_freqs is None else list(key_freqs)
    directions = key_directions(cfg.p, keys, cfg.op)
    steps = run.snapshot_steps()
    if max_snapshots is not None and len(steps) > max_snapshots:
        idx = sorted({round(i * (len(steps) - 1) / (max_snapshots - 1)) for i in range(max_snapshots)})
        steps = [steps[i] for i in idx]
    rows = [{"step": s, **snapshot_measures(run.snapshot(s), run, directions)} for s in steps]
    return GrokkingResult(
        cfg=cfg,
        metrics=run.metrics,
        measures=pd.DataFrame(rows),
        key_freqs=keys,
        embed_norms=embed_freq_norms(run.model, cfg).tolist(),
        phases=phases(run.metrics),
    )
