"""Dataset-scale work on Ray against the local engine, on the embedded model (SmolLM2-135M).

1. Harvest throughput (corpus tokens per second): the local engine with ``--threads`` torch threads
   against the Ray engine with ``--workers`` local workers of ``threads / workers`` threads each (the
   same total), and whether the shards are bit-identical. Ray's start-up (starting Ray, each worker
   loading the model) is reported apart from the harvest itself.
2. An edit-evaluation sweep: ROME over ``--facts`` generated counterfactuals on Ray, with the time of
   each shard.

    python benchmarks/bench_harvest.py [--tokens 16384] [--facts 48] [--shard-facts 8]

Prints two tables (markdown) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hook", default="blocks.15.hook_resid_post")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--block-len", type=int, default=128)
    ap.add_argument("--shard-blocks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--facts", type=int, default=48)
    ap.add_argument("--shard-facts", type=int, default=8)
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--mom2-samples", type=int, default=20_000)
    ap.add_argument("--skip-edits", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Ray runs its workers at niceness 15; on a shared machine that starves them against the local engine's
    # process (niceness 0), so both run at the same priority here
    os.environ.setdefault("RAY_worker_niceness", "0")

    import ray

    import uncover as uc
    from uncover.scale import LocalEngine, ModelSpec, RayEngine, harvest_corpus
    from uncover.scale.ops import RomeEdit, edit_sweep, generated_counterfacts

    model = uc.load()
    kw = dict(tokens=args.tokens, block_len=args.block_len, shard_blocks=args.shard_blocks, batch_size=8)
    per_worker = max(1, args.threads // args.workers)
    tmp = Path(tempfile.mkdtemp(prefix="bench-harvest-"))
    rows = []

    # warm-up: tokenizer, fingerprints and the first forward pass are not what is measured
    harvest_corpus(model, [args.hook], None, tmp / "warm", **{**kw, "tokens": args.block_len * 8})
    for threads in sorted({args.threads, per_worker}):
        torch.set_num_threads(threads)
        c0 = cpu_seconds()
        _, run = harvest_corpus(model, [args.hook], None, tmp / f"local-{threads}", engine=LocalEngine(model), **kw)
        rows.append((f"local, {threads} thread(s)", run["seconds"], run["tokens_per_second"], cpu_since(c0), "-", "-"))
    local_s = next(r[1] for r in rows if r[0].startswith(f"local, {args.threads} "))
    local_cpu = next(r[3] for r in rows if r[0].startswith(f"local, {args.threads} "))

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers * per_worker, include_dashboard=False, log_to_driver=False)
    eng = RayEngine(ModelSpec.of(model), workers=args.workers, threads=per_worker)
    eng.start()
    startup = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    c0 = cpu_seconds()
    _, run = harvest_corpus(model, [args.hook], None, tmp / "ray", engine=eng, **kw)
    ray_cpu = cpu_since(c0)
    same_1 = files(tmp / "ray") == files(tmp / f"local-{per_worker}")
    same_n = files(tmp / "ray") == files(tmp / f"local-{args.threads}")
    rows.append((f"ray, {args.workers} workers x {per_worker} thread(s)", run["seconds"], run["tokens_per_second"],
                 ray_cpu, f"{run['seconds'] / local_s - 1:+.1%}", f"{ray_cpu / local_cpu - 1:+.1%}"))

    print(f"## Harvest: {args.hook}, {args.tokens} tokens in blocks of {args.block_len}, "
          f"{args.shard_blocks} blocks per shard ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__})\n")
    print(f"| engine | wall s | tokens/s (wall) | CPU s (all processes) | Ray vs local at {args.threads} threads: wall "
          "| CPU |")
    print("|---|---|---|---|---|---|")
    for name, sec, tps, cpu, over, over_cpu in rows:
        print(f"| {name} | {sec:.1f} | {tps:,.0f} | {cpu:.1f} | {over} | {over_cpu} |")
    per_cpu = next(r[3] for r in rows if r[0].startswith(f"local, {per_worker} "))
    print(f"\nRay's CPU seconds (driver, Ray's daemons and workers) against the local engine at {per_worker} "
          f"thread(s), the workers' setting: {ray_cpu / per_cpu - 1:+.1%}. Load average at the end: "
          f"{os.getloadavg()[0]:.1f}.")
    print(f"\nRay start-up (start Ray, {args.workers} workers load the model): {startup:.1f} s, not counted above.")
    print(f"Shards bit-identical to the local engine's: {same_1} (local at {per_worker} thread(s) per process), "
          f"{same_n} (local at {args.threads} threads).\n")

    if not args.skip_edits:
        facts = generated_counterfacts(args.facts, seed=0)
        edit = RomeEdit(args.layer, args.mom2_samples)
        from uncover.editing.stats import layer_mom2

        layer_mom2(model, args.layer, mom2_samples=args.mom2_samples)  # computed once and cached; workers read it
        srun = edit_sweep(eng, facts, edit, shard_size=args.shard_facts)
        ev = srun.value
        print(f"## ROME sweep on Ray: {len(facts)} generated counterfactuals, layer {args.layer}, "
              f"{args.workers} workers, {args.shard_facts} facts per shard: {srun.total_seconds:.1f} s\n")
        print("| shard | facts | seconds |")
        print("|---|---|---|")
        for i, (part, sec) in enumerate(zip(srun.partials, srun.seconds)):
            print(f"| {i} | {part.n_facts} | {sec:.1f} |")
        s, b = ev.scores("after"), ev.scores("before")
        print("\n" + ", ".join(f"{m} {s[m]:.0%} (before {b[m]:.0%})" for m in s))
    eng.close()
    ray.shutdown()


if __name__ == "__main__":
    main()
