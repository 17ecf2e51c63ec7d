"""Where caching every hook spends its time: CPU-time ratios, cached bytes per hook point, torch.profiler.

One process, one torch thread, the embedded model, batch 8 × 64 tokens under ``torch.no_grad()``. The
plain HF forward (floor), ``run_with_cache`` of every hook and of the residual hooks are called in turn
for ``--rounds`` rounds; each is timed with the process's CPU time (user + system, so page faults count
and waiting for a core on a loaded machine does not). Prints the median CPU time and its ratio to the
floor, the cached MiB per hook point, and (``--profile``) torch.profiler's top operators.

    python benchmarks/profile_cache.py [--rounds 5] [--profile]
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/profile_cache.py   # torch's allocator on huge pages
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators")
    args = ap.parse_args()
    import torch

    import uncover
    from uncover.hooks.tokens import Batch

    torch.set_num_threads(1)
    m = uncover.load()
    ids = common.make_input_ids(m.tokenizer, 8, 64)
    batch = Batch(ids, torch.ones_like(ids))

    def floor():
        return m.model(input_ids=ids, attention_mask=batch.attention_mask, use_cache=False).logits

    def every():
        return m.run_with_cache(batch, names=None)

    def resid():
        return m.run_with_cache(batch, names=lambda n: any(p in n for p in ("resid", "attn_out", "mlp_out", "embed")))

    with torch.no_grad():
        for f in (floor, every, floor, every):
            f()
        _, cache = every()
        sizes: dict[str, int] = {}
        for k, v in cache.store.items():
            key = k.split(".", 2)[-1] if k.startswith("blocks.") else k
            sizes[key] = sizes.get(key, 0) + v.numel() * v.element_size()
        print(f"{len(cache.store)} tensors cached; MiB per hook point (all layers):")
        for k, v in sorted(sizes.items(), key=lambda x: -x[1]):
            print(f"  {k:32s} {v / 2**20:7.1f}")
        del cache
        times: dict[str, list[float]] = {"floor": [], "every hook": [], "residual hooks": []}
        for _ in range(args.rounds):
            for k, f in (("floor", floor), ("every hook", every), ("floor", floor), ("residual hooks", resid)):
                t = time.process_time()
                out = f()
                times[k].append(time.process_time() - t)
                del out
        base = statistics.median(times["floor"])
        print(f"\nCPU time per call (median of {args.rounds} rounds; THP_MEM_ALLOC_ENABLE="
              f"{os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}):")
        for k, v in times.items():
            print(f"  {k:16s} {statistics.median(v) * 1e3:7.0f} ms  {statistics.median(v) / base:.3f}x the floor")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as p:
                every()
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
