"""Training sparse autoencoders: Adam, warm-ups, dead latents, checkpoints, exact resume.

The recipe follows the papers of each architecture (Bricken et al. 2023 for ReLU + L1 with
unit-norm decoder rows and resampling of dead latents; Gao et al. 2024 for TopK with the
AuxK loss; Rajamanoharan et al. 2024 for JumpReLU's L0 penalty) with the common
engineering of SAELens: inputs scaled so that ``E ||x||^2 = d_in`` (folded back into the
weights at the end, so the saved SAE reads raw activations), ``b_dec`` initialised at the
data mean, linear LR warm-up and a linear decay over the last 20% of steps, sparsity
coefficient warm-up.

Checkpoints (``out_dir/checkpoint``, replaced atomically) hold the parameters, Adam's
moments, the dead-latent counters, the RNG state and the step; batches come from sources
that are pure functions of the step (:mod:`uncover.sae.store`). So ``resume=True`` after a
crash or kill continues to the same weights as an uninterrupted run with the same seed.
Metrics go to ``metrics.csv``, ``metrics.jsonl`` and optionally TensorBoard
(:mod:`uncover.core.metrics_log`; rows after the checkpoint are dropped on resume).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from uncover.core.diverge import check_finite
from uncover.core.errors import UncoverError
from uncover.core.metrics_log import MetricsLog
from uncover.core.results import Result
from uncover.sae.base import SAE

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


class Source(Protocol):
    """Anything with ``batch(step) -> [batch, d_in]`` (deterministic in ``step``)."""

    def batch(self, step: int) -> torch.Tensor: ...


@dataclass
class TrainConfig:
    """Hyper-parameters of SAE training.

    Attributes:
        steps: optimizer steps.
        lr: peak Adam learning rate.
        warmup_steps: linear LR warm-up.
        decay_fraction: final fraction of steps with a linear LR decay to 0.
        sparsity_coeff: L1 (``standard``) or L0 (``jumprelu``) coefficient; unused for ``topk``.
        sparsity_warmup_steps: linear warm-up of the sparsity coefficient.
        dead_steps: a latent that has not fired for this many steps is dead.
        aux_coeff: weight of the dead-latent loss: AuxK (``topk``), pre-activation loss (``jumprelu``).
        resample_every: resample dead latents every so many steps (``standard``; 0 = never).
        normalize: scale inputs so that ``E||x||^2 = d_in`` (estimated on the first batch).
        checkpoint_every: steps between checkpoints (0 = only at the end).
        log_every: steps between metric rows.
        seed: seed of the initialisation and resampling.
    """

    steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 50
    decay_fraction: float = 0.2
    sparsity_coeff: float = 1.0
    sparsity_warmup_steps: int = 100
    dead_steps: int = 200
    aux_coeff: float = 1 / 32
    resample_every: int = 0
    normalize: bool = True
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0:
            raise UncoverError(f"steps must be >= 1 and lr > 0, got {self.steps}, {self.lr}")
        if not 0 <= self.decay_fraction < 1:
            raise UncoverError(f"decay_fraction must be in [0, 1), got {self.decay_fraction}")

    def lr_at(self, step: int) -> float:
        """The learning rate at ``step``.

        >>> c = TrainConfig(steps=100, lr=1.0, warmup_steps=10, decay_fraction=0.5)
        >>> c.lr_at(0), c.lr_at(20), c.lr_at(75)
        (0.1, 1.0, 0.5)
        """
        w = min(1.0, (step + 1) / max(self.warmup_steps, 1))
        start = self.steps * (1 - self.decay_fraction)
        d = 1.0 if step < start else max(0.0, (self.steps - step) / (self.steps - start))
        return self.lr * w * d


@dataclass
class TrainResult(Result):
    """A finished (or resumed) training run.

    Attributes:
        sae: the trained SAE (reading raw activations: the input scale is folded in).
        metrics: one row per logged step.
        out_dir: where the run lives (``None`` if not saved).
        seconds: wall time of this call.
        tokens: activations seen per step times the steps run in this call.
    """

    sae: SAE
    metrics: list[dict[str, float]]
    out_dir: Path | None
    seconds: float
    tokens: int

    @property
    def title(self) -> str:
        return f"{self.sae.cfg.architecture} SAE training ({self.sae.cfg.d_sae} latents)"

    def summary(self) -> str:
        if not self.metrics:
            return self.title
        m = self.metrics[-1]
        return (f"{self.title}: step {int(m['step'])}, FVE {m['fve']:.3f}, L0 {m['l0']:.1f}, dead {m['dead']:.1%}, "
                f"{self.tokens / max(self.seconds, 1e-9):,.0f} activations/s")

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.metrics)

    def plot(self) -> go.Figure:
        from plotly.subplots import make_subplots

        df = self.to_frame()
        fig = make_subplots(rows=1, cols=3, subplot_titles=("fraction of variance explained", "L0", "dead latents"))
        for j, col in enumerate(("fve", "l0", "dead"), 1):
            fig.add_scatter(x=df["step"], y=df[col], row=1, col=j, showlegend=False)
        fig.update_layout(title=self.summary())
        return fig


# ---- checkpoints -------------------------------------------------------------------------------
def _save_checkpoint(path: Path, sae: SAE, opt: torch.optim.Optimizer, state: dict[str, Any],
                     tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, tmp / "params.safetensors")
    osd = opt.state_dict()
    flat = {f"opt.{i}.{k}": v for i, s in osd["state"].items() for k, v in s.items() if isinstance(v, torch.Tensor)}
    flat.update({f"state.{k}": v for k, v in tensors.items()})
    flat["state.rng"] = torch.get_rng_state()
    save_file({k: v.contiguous() for k, v in flat.items()}, tmp / "trainer_state.safetensors")
    meta = {"state": state, "param_groups": osd["param_groups"], "sae_cfg": sae.cfg.to_saelens()}
    (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    old = path.with_name(path.name + ".old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, sae: SAE, opt: torch.optim.Optimizer
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    if not (path / "trainer_state.json").is_file():
        old = path.with_name(path.name + ".old")  # killed between the two renames
        if (old / "trainer_state.json").is_file():
            path = old
        else:
            raise UncoverError(f"{path}: no checkpoint to resume from; run without resume first")
    sae.load_state_dict(load_file(path / "params.safetensors"))
    meta = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    flat = load_file(path / "trainer_state.safetensors")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(flat["state.rng"])
    return meta["state"], {k[6:]: v for k, v in flat.items() if k.startswith("state.")}


# ---- dead latents ------------------------------------------------------------------------------
@torch.no_grad()
def resample_dead(sae: SAE, x: torch.Tensor, dead: torch.Tensor, opt: torch.optim.Optimizer, seed: int) -> int:
    """Re-initialise dead latents towards badly reconstructed inputs (Bricken et al. 2023).

    Each dead latent's decoder row becomes the normalised residual ``x - x_hat`` of an input
    drawn with probability proportional to its squared error; its encoder column is that
    direction scaled to 0.2 x the mean alive encoder norm; its bias and Adam moments are reset.
    Returns the number resampled.
    """
    idx = dead.nonzero().flatten()
    if not len(idx):
        return 0
    err = x - sae(x)
    w = err.pow(2).sum(-1)
    g = torch.Generator().manual_seed(seed)
    pick = torch.multinomial(w / w.sum(), len(idx), replacement=True, generator=g)
    dirs = err[pick] / err[pick].norm(dim=-1, keepdim=True).clamp(min=1e-8)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec[idx] = dirs
    sae.W_enc[:, idx] = dirs.T * 0.2 * enc_norm
    sae.b_enc[idx] = 0.0
    for p, sl in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        for m in opt.state.get(p, {}).values():
            if isinstance(m, torch.Tensor) and m.dim():
                m[sl] = 0.0
    return len(idx)


# ---- the loop ----------------------------------------------------------------------------------
def train_sae(sae: SAE, source: Source, cfg: TrainConfig, out_dir: str | Path | None = None,
              resume: bool = False, progress: bool = True,
              tensorboard: str | Path | bool | None = None) -> TrainResult:
    """Train ``sae`` on batches from ``source`` (see :mod:`uncover.sae.store`).

    With ``out_dir``: checkpoints every ``cfg.checkpoint_every`` steps, metrics to
    ``metrics.csv``/``metrics.jsonl``, the final SAE to ``out_dir/sae`` (SAELens format).
    ``tensorboard``: also write the same scalars (tags ``train/<metric>``) as TensorBoard
    events to this directory, or to ``out_dir/tensorboard`` with ``True`` (needs the
    ``tensorboardX`` package: ``pip install uncover[tensorboard]``).
    ``resume=True`` continues from ``out_dir/checkpoint`` to the same result as an
    uninterrupted run. The returned SAE reads raw activations.

    >>> from uncover.sae import TopKSAE, SAEConfig, TensorSource
    >>> sae = TopKSAE(SAEConfig(d_in=8, d_sae=32, architecture="topk", k=4))
    >>> r = train_sae(sae, TensorSource(torch.randn(512, 8), 64), TrainConfig(steps=20), progress=False)
    >>> r.metrics[-1]["step"]
    19
    """
    out = Path(out_dir) if out_dir is not None else None
    c = sae.cfg
    if c.normalize_activations != "none" or c.rescale_acts_by_decoder_norm:
        raise UncoverError("train_sae trains SAEs with normalize_activations='none' and "
                           "rescale_acts_by_decoder_norm=false (the trainer scales inputs itself and keeps "
                           f"decoder rows at unit norm); this one has {c.normalize_activations!r}, "
                           f"{c.rescale_acts_by_decoder_norm}")
    if resume and out is None:
        raise UncoverError("resume needs out_dir (where the checkpoint is)")
    params = [p for p in sae.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
    d_sae = sae.cfg.d_sae
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    start, scale = 0, 1.0
    if resume:
        state, tensors = _load_checkpoint(out / "checkpoint", sae, opt)  # type: ignore[operator]
        start, scale, since_fired = state["step"], state["scale"], tensors["since_fired"]
    else:
        torch.manual_seed(cfg.seed)
        x0 = source.batch(0).float()
        if cfg.normalize:
            scale = float((sae.cfg.d_in / x0.pow(2).sum(-1).mean().clamp(min=1e-12)).sqrt())
        with torch.no_grad():
            sae.b_dec.copy_(x0.mean(0) * scale)
    log = MetricsLog(out, tensorboard, start, resume)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"SAE {sae.cfg.architecture}", file=sys.stderr)
    try:
        return _loop(sae, source, cfg, opt, log, bar, out, start, scale, since_fired)
    finally:
        log.close()
        if bar is not None:
            bar.close()


def _loop(sae: SAE, source: Source, cfg: TrainConfig, opt: torch.optim.Optimizer, log: MetricsLog, bar: Any,
          out: Path | None, start: int, scale: float, since_fired: torch.Tensor) -> TrainResult:
    t0, n_tokens = time.perf_counter(), 0
    sae.train()
    for step in range(start, cfg.steps):
        x = source.batch(step).float() * scale
        n_tokens += len(x)
        lr = cfg.lr_at(step)
        for grp in opt.param_groups:
            grp["lr"] = lr
        coeff = cfg.sparsity_coeff * min(1.0, (step + 1) / max(cfg.sparsity_warmup_steps, 1))
        dead = since_fired >= cfg.dead_steps
        loss, parts, f = sae.training_loss(x, coeff, dead, cfg.aux_coeff)
        check_finite(step, loss=loss, lr=cfg.lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        unit = getattr(sae, "unit_decoder", False)
        if unit:
            sae.remove_parallel_grad()
        opt.step()
        if unit:
            sae.normalize_decoder()
        fired = (f.detach() > 0).any(0)
        since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + 1)
        if cfg.resample_every and sae.cfg.architecture == "standard" and (step + 1) % cfg.resample_every == 0:
            if resample_dead(sae, x, since_fired >= cfg.dead_steps, opt, cfg.seed * 1_000_003 + step):
                since_fired = torch.where(since_fired >= cfg.dead_steps, 0, since_fired)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            var = (x - x.mean(0)).pow(2).sum(-1).mean()
            row = {"step": step, "loss": float(loss.detach()), **parts, "fve": 1 - parts["mse"] / float(var),
                   "l0": float((f.detach() > 0).float().sum(-1).mean()), "dead": float(dead.float().mean()),
                   "lr": lr, "sparsity_coeff": coeff}
            log.write(row)
            if bar is not None:
                bar.set_postfix(fve=f"{row['fve']:.3f}", l0=f"{row['l0']:.1f}", dead=f"{row['dead']:.2f}")
        if bar is not None:
            bar.update(1)
        done = step + 1
        if out is not None and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps):
            check_finite(done, params=sae.parameters(), lr=cfg.lr)  # never save weights that diverged
            _save_checkpoint(out / "checkpoint", sae, opt, {"step": done, "scale": scale, "train_cfg": asdict(cfg)},
                             {"since_fired": since_fired})
            log.flush()
    check_finite(cfg.steps, params=sae.parameters(), lr=cfg.lr)
    sae.eval()
    sae.fold_scale(scale)
    if out is not None:
        sae.save(out / "sae")
    return TrainResult(sae, log.rows, out, time.perf_counter() - t0, n_tokens)

