"""Operations over many prompt pairs: ``patch-sweep`` (activation or attribution patching) and ``circuit-sweep``
(EAP or EAP-IG), each a sweep over shards of pairs on the local or the Ray engine (:mod:`uncover.scale.ops.pairs`).

The pairs are a task's (those the model gets right, with clean and corrupt of one token count) or a JSONL file's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from uncover.circuits.circuit import Circuit
from uncover.core.config import Config, param
from uncover.core.errors import UsageError
from uncover.ops.registry import operation
from uncover.patching.pair_config import Task
from uncover.scale.ops.engine import engine_param, open_engine, ray_address_param, threads_param, workers_param
from uncover.scale.ops.pairs import PatchSettings, PatchSweep, circuit_sweep, patching_sweep

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.data.tasks import PromptPair
    from uncover.hooks.hooked import HookedModel

Metric = Literal["logit_diff", "prob", "logprob"]


@dataclass(frozen=True)
class PairsSweepConfig(Config):
    """Many prompt pairs (a task's or a file's), swept in shards on an engine."""

    task: Task = param("ioi", help="The task whose pairs are swept (those the model gets right)")
    pairs_file: Path | None = param(
        None, help="A JSONL file of pairs (clean, corrupt, answer, wrong) instead of --task", path="in"
    )
    n_pairs: int = param(32, flag="--pairs", help="Number of pairs (at most)", ge=1)
    shard_size: int = param(8, help="Pairs per shard (one task each)", ge=1)
    engine: Literal["local", "ray"] = engine_param()
    workers: int = workers_param()
    threads: int = threads_param()
    ray_address: str | None = ray_address_param()

    def validate(self) -> None:
        if self.pairs_file is not None:  # a broken pairs file is refused when the config is built, not mid-sweep
            from uncover.data.tasks import from_jsonl

            if not from_jsonl(self.pairs_file).pairs:
                raise UsageError(f"{type(self).__name__}: pairs_file (--pairs-file) {self.pairs_file} holds no pairs; "
                                 "give one JSON object per line with clean, corrupt, answer, wrong")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        if self.pairs_file is not None:
            from uncover.data.tasks import from_jsonl

            from_jsonl(self.pairs_file).check(model)


def sweep_pairs(
    model: HookedModel, task: str = "ioi", n: int = 32, pairs_file: str | Path | None = None, *, chunk: int = 32
) -> list[PromptPair]:
    """Up to ``n`` pairs: a JSONL file's (checked: equal token counts, one-token answers), or those of ``task`` the
    model gets right (made ``2 n``, checked ``chunk`` prompts at a time, so that thousands never make one batch).

    >>> len(sweep_pairs(model, "ioi", 3))
    3
    """
    from uncover.data.tasks import TASKS, Task, facts_for, from_jsonl

    if pairs_file is not None:
        pairs = from_jsonl(pairs_file).check(model).pairs
    elif task == "facts":
        pairs = facts_for(model).pairs
    elif task in TASKS:
        made = TASKS[task](2 * n).pairs
        pairs = [
            p
            for i in range(0, len(made), chunk)
            for p in Task(task, made[i : i + chunk]).filter_correct(model).pairs
            if len(model.to_tokens(p.clean)[0]) == len(model.to_tokens(p.corrupt)[0])
        ]
    else:
        raise UsageError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if not pairs:
        raise UsageError(
            f"no pairs to sweep: the model gets no {task} pair right"
            if pairs_file is None
            else f"{pairs_file} holds no pairs"
        )
    return pairs[:n]


@dataclass(frozen=True)
class PatchSweepConfig(PairsSweepConfig):
    """Activation or attribution patching of many prompt pairs, one grid per pair."""

    method: Literal["activation", "attribution"] = param(
        "activation",
        help="Exact activation patching, or its attribution-patching estimate (one backward pass per pair)",
    )
    hook: Literal["resid_pre", "attn_out", "mlp_out", "z"] = param("z", help="Patched activation")
    per: Literal["pos", "head", "head_pos"] = param(
        "head",
        help="Grid: per position (resid_pre, attn_out, mlp_out; pairs of one length), per head or per head & "
        "position (z)",
    )
    metric: Metric = param("logit_diff", help="Metric at the last position")
    direction: Literal["denoise", "noise"] = param("denoise", help="denoise: clean into corrupt; noise: the reverse")

    def validate(self) -> None:
        super().validate()
        if (self.hook == "z") == (self.per == "pos"):
            valid = "head, head_pos" if self.hook == "z" else "pos"
            raise UsageError(
                f"PatchSweepConfig: per (--per) {self.per!r} does not fit hook (--hook) {self.hook!r}; valid: {valid}"
            )


@operation(
    "patch-sweep",
    PatchSweepConfig,
    PatchSweep,
    long=True,
    rtol=1e-4,
    atol=1e-5,
    example={"method": "attribution", "n_pairs": 2, "shard_size": 1},
)
def patch_sweep(model: HookedModel, cfg: PatchSweepConfig, progress: Progress) -> PatchSweep:
    """Activation or attribution patching over many prompt pairs, sharded (one grid per pair, and the mean)."""
    pairs = sweep_pairs(model, cfg.task, cfg.n_pairs, cfg.pairs_file)
    settings = PatchSettings(cfg.hook, cfg.per, cfg.metric, cfg.direction, cfg.method)
    progress.message(f"{cfg.method} patching of {len(pairs)} pairs on the {cfg.engine} engine ...")
    with open_engine(model, cfg) as eng:
        run = patching_sweep(eng, pairs, settings, shard_size=cfg.shard_size, progress=progress)
    return PatchSweep.of(settings, run, pairs)


@dataclass(frozen=True)
class CircuitSweepConfig(PairsSweepConfig):
    """EAP or EAP-IG edge scores over many prompt pairs (the mean metric over all of them), sharded."""

    method: Literal["eap", "eap-ig"] = param("eap", help="Edge attribution patching, or with integrated gradients")
    metric: Metric = param("logit_diff", help="Metric at the last position (mean over the pairs)")
    steps: int = param(5, help="EAP-IG interpolation steps", ge=1)
    edges: int = param(200, help="Keep the N edges with the largest |score|", ge=1)


@operation(
    "circuit-sweep",
    CircuitSweepConfig,
    Circuit,
    long=True,
    rtol=1e-3,
    atol=1e-4,
    example={"n_pairs": 2, "shard_size": 1, "edges": 20},
)
def circuit_sweep_op(model: HookedModel, cfg: CircuitSweepConfig, progress: Progress) -> Circuit:
    """EAP or EAP-IG circuit discovery over many prompt pairs, sharded (the scores of one batch of all pairs)."""
    pairs = sweep_pairs(model, cfg.task, cfg.n_pairs, cfg.pairs_file)
    progress.message(f"{cfg.method} on {len(pairs)} pairs on the {cfg.engine} engine ...")
    with open_engine(model, cfg) as eng:
        run = circuit_sweep(
            eng,
            model,
            pairs,
            method=cfg.method,
            metric=cfg.metric,
            steps=cfg.steps,
            shard_size=cfg.shard_size,
            progress=progress,
        )
    c = run.value
    c.meta["task"] = cfg.task if cfg.pairs_file is None else str(cfg.pairs_file)
    return c.top(cfg.edges)
