"""``uncover grok``: train (or resume) a grokking run and report its progress measures."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from uncover.cli.common import emit
from uncover.core.errors import UncoverError


def grok(
    p: int = typer.Option(113, "--p", help="Prime modulus"),
    op: str = typer.Option("+", "--op", help="Operation: +, -, * or /"),
    steps: int | None = typer.Option(None, "--steps", help="Total full-batch steps (default 25000; on --resume: "
                                     "the stored value)"),
    train_frac: float = typer.Option(0.3, "--train-frac", help="Fraction of pairs used for training"),
    weight_decay: float = typer.Option(1.0, "--weight-decay", help="AdamW weight decay (0: memorize only)"),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate"),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and the initialisation"),
    init_scale: float = typer.Option(4.0, "--init-scale", help="Multiplier on GPT-2's initial weights "
                                     "(4 ≈ Nanda et al.: memorize at once, generalise later; 1: no delay)"),
    eval_every: int = typer.Option(100, "--eval-every", help="Steps between metric rows"),
    out: Path | None = typer.Option(None, "--out", help="Run directory (checkpoints, snapshots, metrics)"),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this directory"),
    compare: str | None = typer.Option(None, "--compare", help="Instead of one run: 'wd' (with vs without weight "
                                       "decay) or 'fractions' (training-fraction sweep 0.2, 0.3, 0.5, 0.7)"),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch (1 on a shared machine)"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Grokking on modular arithmetic (Nanda et al. 2023): curves, key frequencies, phases."""
    from uncover.dynamics.grokking import (
        GrokConfig,
        fraction_sweep,
        progress_measures,
        train,
        weight_decay_comparison,
    )

    if resume is not None:
        if out is not None and out != resume:
            raise UncoverError("give either --out (new run) or --resume (existing run), not both")
        cfg = GrokConfig.load(resume)
        if steps is not None:
            cfg = cfg.replace(steps=steps)
        run = train(cfg, resume, resume=True, threads=threads)
    else:
        cfg = GrokConfig(p=p, op=op, train_frac=train_frac, weight_decay=weight_decay, lr=lr, seed=seed,
                         init_scale=init_scale, eval_every=eval_every, **({} if steps is None else {"steps": steps}))
        if compare is not None:
            choices = {"wd": weight_decay_comparison, "fractions": fraction_sweep}
            if compare not in choices:
                raise UncoverError(f"unknown --compare {compare!r}; valid: {', '.join(choices)}")
            emit(choices[compare](cfg, out=out, threads=threads), as_json, html)
            return
        run = train(cfg, out, threads=threads)
    print("uncover: computing progress measures ...", file=sys.stderr, flush=True)
    emit(progress_measures(run, max_snapshots=120), as_json, html)
