"""Dataset-scale work on Ray against the local engine, on the embedded model (SmolLM2-135M).

1. Harvest throughput (corpus tokens per second): the local engine at 1 thread and at ``--threads`` threads
   against the Ray engine with ``--workers`` local workers of ``threads / workers`` threads each (the same total),
   in wall time and in CPU time of all processes (the driver, Ray's daemons and workers), and whether the shards
   are bit-identical. Ray's start-up (starting Ray, each worker loading the model) is reported apart.
2. An edit-evaluation sweep: ROME over ``--facts`` generated counterfactuals on Ray, with each shard's time,
   facts and scores, and the efficacy / paraphrase (generalisation) / neighbourhood (specificity) totals.

The two parts as separate commands (estimates for an idle 2-core machine, from CPU times measured under load):

    python benchmarks/bench_harvest.py --skip-edits --tokens 65536              # about 5 to 8 minutes
    python benchmarks/bench_harvest.py --skip-harvest --facts 191 --shard-facts 24 --steps 5   # about 10 minutes

(``--steps 5`` is bench_editing's setting, a 3.2 s edit; ROME's default 25 steps, which stop early once the new
object is likely, takes longer.) The shard folders are deleted at the end (``--keep`` keeps them).

A quick check of both (a minute or two, plus Ray's start-up):

    python benchmarks/bench_harvest.py --tokens 1024 --shard-blocks 2 --facts 2 --shard-facts 1 --steps 5

Prints markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard_*.safetensors"))}


def cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of this process and every process under it (a local Ray's GCS, raylet,
    object store and workers are all started under the driver), by pid."""
    import psutil

    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def cpu_since(before: dict[int, float]) -> float:
    now = cpu_seconds()
    return sum(t - before.get(pid, 0.0) for pid, t in now.items())


def bench_harvest(args: argparse.Namespace, model: Any, start_ray: Any, tmp: Path) -> None:
    import ray

    from uncover.scale import LocalEngine, harvest_corpus

    kw = dict(tokens=args.tokens, block_len=args.block_len, shard_blocks=args.shard_blocks, batch_size=8)
    per_worker = max(1, args.threads // args.workers)
    rows = []
    # warm-up: tokenizer, fingerprints and the first forward pass are not what is measured
    harvest_corpus(model, [args.hook], None, tmp / "warm", **{**kw, "tokens": args.block_len * 8})
    for threads in sorted({1, per_worker, args.threads}):
        torch.set_num_threads(threads)
        c0 = cpu_seconds()
        _, run = harvest_corpus(model, [args.hook], None, tmp / f"local-{threads}", engine=LocalEngine(model), **kw)
        rows.append((f"local, {threads} thread(s)", run["seconds"], run["tokens_per_second"], cpu_since(c0), "", ""))
    local_s = next(r[1] for r in rows if r[0].startswith(f"local, {args.threads} "))
    local_cpu = next(r[3] for r in rows if r[0].startswith(f"local, {args.threads} "))

    eng, startup = start_ray()
    torch.set_num_threads(args.threads)
    c0 = cpu_seconds()
    _, run = harvest_corpus(model, [args.hook], None, tmp / "ray", engine=eng, **kw)
    ray_cpu = cpu_since(c0)
    same_1 = files(tmp / "ray") == files(tmp / f"local-{per_worker}")
    same_n = files(tmp / "ray") == files(tmp / f"local-{args.threads}")
    rows.append(
        (
            f"ray, {args.workers} workers x {per_worker} thread(s)",
            run["seconds"],
            run["tokens_per_second"],
            ray_cpu,
            f"{run['seconds'] / local_s - 1:+.1%}",
            f"{ray_cpu / local_cpu - 1:+.1%}",
        )
    )

    n_shards = -(-(args.tokens // args.block_len) // args.shard_blocks)
    print(
        f"## Harvest: {args.hook}, {args.tokens} tokens in blocks of {args.block_len}, {args.shard_blocks} "
        f"blocks per shard ({n_shards} shards), batch 8 ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__})\n"
    )
    print(
        f"| engine | wall s | tokens/s (wall) | CPU s (all processes) | Ray vs local at {args.threads} threads: wall "
        "| CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, sec, tps, cpu, over, over_cpu in rows:
        print(f"| {name} | {sec:.1f} | {tps:,.0f} | {cpu:.1f} | {over} | {over_cpu} |")
    per_cpu = next(r[3] for r in rows if r[0].startswith(f"local, {per_worker} "))
    print(
        f"\n- Goal: Ray overhead <= 15% against the local engine at {args.threads} threads: wall "
        f"{run['seconds'] / local_s - 1:+.1%}, CPU {ray_cpu / local_cpu - 1:+.1%}."
    )
    print(
        f"- Ray's CPU seconds against the local engine at {per_worker} thread(s) per process (the workers' "
        f"setting): {ray_cpu / per_cpu - 1:+.1%}."
    )
    print(f"- Ray start-up (start Ray, {args.workers} workers load the model): {startup:.1f} s, not counted above.")
    print(
        f"- Shards bit-identical to the local engine's: {same_1} (local at {per_worker} thread(s) per process), "
        f"{same_n} (local at {args.threads} threads)."
    )
    print(f"- Load average at the end: {os.getloadavg()[0]:.1f}.\n")


def bench_edits(args: argparse.Namespace, model: Any, start_ray: Any) -> None:
    from uncover.editing.rome import RomeConfig
    from uncover.editing.stats import layer_mom2
    from uncover.scale.ops import RomeEdit, edit_sweep, generated_counterfacts

    facts = generated_counterfacts(args.facts, seed=0)
    edit = RomeEdit(args.layer, args.mom2_samples, config=RomeConfig(steps=args.steps))
    layer_mom2(model, args.layer, mom2_samples=args.mom2_samples)  # computed once and cached; workers read it
    eng, _ = start_ray()
    eng.in_flight = 1  # a shard of edits takes minutes: none waits behind another while a worker idles at the end
    c0 = cpu_seconds()
    srun = edit_sweep(eng, facts, edit, shard_size=args.shard_facts)
    cpu = cpu_since(c0)
    ev = srun.value
    print(
        f"## ROME sweep on Ray: {len(facts)} generated counterfactuals, layer {args.layer}, key statistics over "
        f"{args.mom2_samples:,} tokens (cached), {args.steps} optimisation steps, {args.workers} workers x "
        f"{eng.threads} thread(s), {args.shard_facts} facts per shard ({len(srun.partials)} shards)\n"
    )
    print("| shard | facts | seconds | s / fact | efficacy | paraphrase | neighbourhood |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for i, (part, sec) in enumerate(zip(srun.partials, srun.seconds)):
        s = part.scores("after")
        print(
            f"| {i} | {part.n_facts} | {sec:.1f} | {sec / part.n_facts:.1f} | {s['efficacy']:.0%} | "
            f"{s['paraphrase']:.0%} | {s['neighbourhood']:.0%} |"
        )
    after, before = ev.scores("after"), ev.scores("before")
    busy, wall = sum(srun.seconds), srun.total_seconds
    print(
        f"\n- Sweep: {wall:.1f} s wall for {ev.n_facts} facts ({60 * ev.n_facts / wall:.1f} facts/min); shards "
        f"busy {busy:.1f} s in all ({busy / wall:.2f} workers busy on average); "
        f"mean edit {sum(ev.edit_seconds) / len(ev.edit_seconds):.2f} s; CPU {cpu:.1f} s (all processes)."
    )
    print(
        "- Scores after the edits (before): "
        + ", ".join(f"{m} {after[m]:.1%} ({before[m]:.1%})" for m in after)
        + f". Load average at the end: {os.getloadavg()[0]:.1f}.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hook", default="blocks.15.hook_resid_post")
    ap.add_argument("--tokens", type=int, default=16384, help="corpus tokens harvested (65536 amortises Ray's cost)")
    ap.add_argument("--block-len", type=int, default=128)
    ap.add_argument("--shard-blocks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="total torch threads (local) = workers x threads (Ray)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--facts", type=int, default=48, help="generated counterfactuals edited (at most 191)")
    ap.add_argument("--shard-facts", type=int, default=24)
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--mom2-samples", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=25, help="ROME's optimisation steps per edit")
    ap.add_argument("--skip-edits", action="store_true")
    ap.add_argument("--skip-harvest", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the shard folders (in a temporary folder)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Ray runs its workers at niceness 15; on a shared machine that starves them against the local engine's
    # process (niceness 0), so both run at the same priority here
    os.environ.setdefault("RAY_worker_niceness", "0")

    import ray

    import uncover as uc
    from uncover.scale import ModelSpec, RayEngine

    model = uc.load()
    per_worker = max(1, args.threads // args.workers)
    held: list[Any] = []

    def start_ray() -> tuple[RayEngine, float]:
        """Ray and its workers, started once (on first use) and shared by both parts."""
        if not held:
            t0 = time.perf_counter()
            ray.init(num_cpus=args.workers * per_worker, include_dashboard=False, log_to_driver=False)
            eng = RayEngine(ModelSpec.of(model), workers=args.workers, threads=per_worker)
            eng.start()
            held.append((eng, time.perf_counter() - t0))
        return held[0]

    tmp = Path(tempfile.mkdtemp(prefix="bench-harvest-"))
    try:
        if not args.skip_harvest:
            bench_harvest(args, model, start_ray, tmp)
        if not args.skip_edits:
            bench_edits(args, model, start_ray)
    finally:
        if held:
            held[0][0].close()
        ray.shutdown()
        if args.keep:
            print(f"shards kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
