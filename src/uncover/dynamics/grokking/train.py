"""Training loop of a grokking run: full-batch AdamW, metrics, snapshots, resumable checkpoints.

A run directory holds ``config.json``, ``metrics.csv`` and ``metrics.jsonl`` (one row per
``eval_every`` steps), ``snapshots/step_NNNNNN.safetensors`` (weights for the progress
measures of Nanda et al. 2023), ``checkpoints/step_NNNNNN/`` (``model.safetensors``,
``state.safetensors`` with the AdamW moments and the RNG state, ``state.json``) and the final
``model.safetensors``. Resuming from the latest checkpoint gives the same numbers, bit for bit
on the same machine, as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from uncover.core.diverge import check_finite
from uncover.core.metrics_log import MetricsLog
from uncover.core.threads import torch_threads
from uncover.dynamics.grokking.config import GrokConfig, GrokConfigError
from uncover.dynamics.grokking.data import ModularData, make_data
from uncover.dynamics.grokking.fourier import embed_gini
from uncover.dynamics.grokking.model import (
    build_model,
    hooked,
    last_logits,
    last_position_mlp,
    load_model,
    save_weights,
)
from uncover.hooks.hooked import HookedModel

METRICS = ("step", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "weight_norm", "embed_gini")


@dataclass
class GrokRun:
    """A trained (or partly trained) grokking model with its data and metrics."""

    cfg: GrokConfig
    """The run's configuration."""
    model: Any
    """The ``GPT2LMHeadModel`` (identity norms)."""
    data: ModularData
    """All pairs and the train/test split."""
    rows: list[dict[str, float]]
    """Metric rows (see ``METRICS``), one per ``eval_every`` steps plus step 0."""
    out: Path | None = None
    """The run directory (``None``: in memory only)."""
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    """In-memory weight snapshots by step (only when ``out`` is ``None``)."""

    @property
    def metrics(self) -> pd.DataFrame:
        """The metric rows as a table."""
        return pd.DataFrame(self.rows, columns=list(METRICS))

    @property
    def hooked(self) -> HookedModel:
        """The model as a :class:`HookedModel`."""
        return hooked(self.model, self.cfg)

    def snapshot_steps(self) -> list[int]:
        """Steps with a weight snapshot, in order."""
        if self.out is None:
            return sorted(self.snapshots)
        return sorted(int(f.stem.split("_")[1]) for f in (self.out / "snapshots").glob("step_*.safetensors"))

    def snapshot(self, step: int) -> Any:
        """The model as it was at ``step`` (a new ``GPT2LMHeadModel``)."""
        if self.out is None:
            m = build_model(self.cfg)
            m.load_state_dict(self.snapshots[step])
            return m
        return load_model(self.cfg, self.out / "snapshots" / f"step_{step:06d}.safetensors")


def weight_norm(model: torch.nn.Module) -> float:
    """Total L2 norm of all parameters."""
    return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))


@torch.no_grad()
def evaluate(model: Any, data: ModularData) -> dict[str, float]:
    """Train/test loss and accuracy of ``model`` on ``data``."""
    out: dict[str, float] = {}
    with last_position_mlp(model):
        for split, (x, y) in (("train", data.train), ("test", data.test)):
            logits = last_logits(model, x, data.p).double()
            out[f"{split}_loss"] = float(F.cross_entropy(logits, y))
            out[f"{split}_acc"] = float((logits.argmax(-1) == y).double().mean())
    return out


def _optimizer(model: torch.nn.Module, cfg: GrokConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                             betas=(cfg.beta1, cfg.beta2), foreach=False)


def _save_checkpoint(out: Path, step: int, model: Any, opt: torch.optim.AdamW, rows: list[dict]) -> None:
    d = out / "checkpoints" / f"step_{step:06d}"
    d.mkdir(parents=True, exist_ok=True)
    save_weights(model, d / "model.safetensors")
    tensors = {"rng.torch": torch.get_rng_state()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"adam.{i}.{k}"] = v.detach().clone().reshape(v.shape)
    save_file(tensors, str(d / "state.safetensors"))
    (d / "state.json").write_text(json.dumps({"step": step, "metric_rows": len(rows),
                                              "torch": torch.__version__}, indent=1))


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest ``checkpoints/step_*`` directory of a run, or ``None``."""
    found = sorted((Path(out) / "checkpoints").glob("step_*/state.json"))
    return found[-1].parent if found else None


def _load_checkpoint(d: Path, model: Any, opt: torch.optim.AdamW) -> int:
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    t = load_file(str(d / "state.safetensors"))
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in t.items():
        if k.startswith("adam."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)
    torch.set_rng_state(t["rng.torch"])
    return int(json.loads((d / "state.json").read_text())["step"])


def _check_resume(out: Path, cfg: GrokConfig) -> None:
    old = GrokConfig.load(out)
    diff = [k for k, v in old.__dict__.items() if k != "steps" and getattr(cfg, k) != v]
    if diff:
        raise GrokConfigError(f"{out}: cannot resume with a different config ({', '.join(diff)} changed); "
                              "only steps may change, or use a new --out directory")


_FIX = "lower --lr (or --init-scale, --weight-decay)"


def train(
    cfg: GrokConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> GrokRun:
    """Train the grokking model of ``cfg``; write the run to ``out`` when given.

    ``resume=True`` continues from the latest checkpoint in ``out`` (only ``steps`` may differ
    from the stored config). ``threads`` sets torch's CPU threads for the run (1 is the good
    neighbour on a shared machine). The MLP runs on the last position only while training
    (:func:`~uncover.dynamics.grokking.model.last_position_mlp`), which leaves the loss unchanged.

    >>> run = train(GrokConfig(p=7, d_model=8, n_heads=2, d_mlp=16, steps=20, eval_every=10), progress=False)
    >>> [r["step"] for r in run.rows], run.snapshot_steps()
    ([0, 10, 20], [0, 20])
    """
    outp = Path(out) if out is not None else None
    data = make_data(cfg)
    model = build_model(cfg).train()
    opt = _optimizer(model, cfg)
    run = GrokRun(cfg, model, data, [], outp)
    start = 0
    if outp is not None:
        ckpt = latest_checkpoint(outp) if resume else None
        if resume and ckpt is None:
            raise GrokConfigError(f"{outp}: no checkpoint to resume from (expected {outp}/checkpoints/step_*)")
        if ckpt is not None:
            _check_resume(outp, cfg)
            start = _load_checkpoint(ckpt, model, opt)
        elif (outp / "config.json").exists() and latest_checkpoint(outp) is not None:
            raise GrokConfigError(f"{outp} already holds a run; pass resume=True (--resume) or choose a new directory")
        outp.mkdir(parents=True, exist_ok=True)
        (outp / "snapshots").mkdir(exist_ok=True)
        (outp / "config.json").write_text(cfg.to_json())
    # the row of the checkpoint's own step was logged before it was saved: keep rows up to ``start``
    log = MetricsLog(outp, start=start + 1 if start else 0, resume=start > 0)
    run.rows = log.rows
    x, y = data.train
    with torch_threads(threads):
        if start == 0:
            _record(run, log, 0, 0.0)
        bar = tqdm(total=cfg.steps, initial=start, disable=not progress, file=sys.stderr,
                   desc=f"grok p={cfg.p} {cfg.op}", dynamic_ncols=True)
        try:
            for step in range(start, cfg.steps):
                lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
                for g in opt.param_groups:
                    g["lr"] = lr
                with last_position_mlp(model):
                    loss = F.cross_entropy(last_logits(model, x, cfg.p).double(), y)
                check_finite(step, loss=loss, lr=cfg.lr, what="grok training", fix=_FIX)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                s = step + 1
                check_finite(s, params=model.parameters(), lr=cfg.lr, what="grok training", fix=_FIX)
                bar.update(1)
                if s % cfg.eval_every == 0 or s == cfg.steps:
                    row = _record(run, log, s, lr)
                    bar.set_postfix(train=f"{row['train_acc']:.3f}", test=f"{row['test_acc']:.3f}")
                if cfg.snapshot_every and s % cfg.snapshot_every == 0 or s == cfg.steps:
                    _snapshot(run, s)
                if outp is not None and (cfg.checkpoint_every and s % cfg.checkpoint_every == 0 or s == cfg.steps):
                    _save_checkpoint(outp, s, model, opt, run.rows)
        finally:  # before an error is printed, so that it gets a line of its own
            bar.close()
    model.eval()
    if outp is not None:
        save_weights(model, outp / "model.safetensors")
    return run


def _read_rows(out: Path) -> list[dict[str, float]]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _record(run: GrokRun, log: MetricsLog, step: int, lr: float) -> dict[str, float]:
    row: dict[str, Any] = {"step": step, "lr": lr, **evaluate(run.model, run.data),
                           "weight_norm": weight_norm(run.model)}
    row["embed_gini"] = embed_gini(run.model, run.cfg)
    log.write(row)  # appends to run.rows (the same list) and to the run directory's files
    if step == 0:
        _snapshot(run, 0)
    return row


def _snapshot(run: GrokRun, step: int) -> None:
    if run.out is None:
        run.snapshots[step] = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    else:
        save_weights(run.model, run.out / "snapshots" / f"step_{step:06d}.safetensors")


def load_run(out: str | Path) -> GrokRun:
    """A finished (or interrupted) run from its directory: final (or latest) weights and metrics."""
    outp = Path(out)
    cfg = GrokConfig.load(outp)
    final = outp / "model.safetensors"
    ckpt = latest_checkpoint(outp)
    if final.exists():
        model = load_model(cfg, final)
    elif ckpt is not None:
        model = load_model(cfg, ckpt / "model.safetensors")
    else:
        raise GrokConfigError(f"{outp}: no model.safetensors and no checkpoint")
    return GrokRun(cfg, model, make_data(cfg), _read_rows(outp), outp)
