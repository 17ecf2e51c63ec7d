"""Where caching every hook spends its time: CPU time and page faults per call, cached bytes per hook point.

One process, one torch thread (``--threads``), the embedded model, batch 8 × 64 tokens under
``torch.no_grad()``. The plain HF forward (floor) and one configuration (``--config``: ``every`` hook,
the ``resid``ual hooks, or ``fresh``: writing as many fresh bytes as every-hook caching stores besides
the logits, in tensors of the same sizes, outside any model) are called alternately for ``--rounds`` rounds, as
``bench_cache.py`` does (a process per configuration: how glibc reuses freed memory depends on what
ran before, so configurations are not mixed). Each call is measured with the process's CPU time
(user + system, so page faults count and waiting for a core on a loaded machine does not) and its
minor page faults (``ru_minflt``: each is one fresh 4 KiB page the call wrote). Prints the medians
and their ratios to the floor, the MiB held per hook point (``lazy``: kept as a recipe, see
``hooks/cache.py``), and (``--profile``) torch.profiler's top operators.

``--no-pool`` keeps every value in the model's own tensors (no copies into buffers of dropped caches,
``hooks/pool.py``), as before the pool. ``--eager`` turns the recipes off (every derived value computed
during the forward, as before issue 13's change), to compare the two in the same environment.

    python benchmarks/profile_cache.py [--config every|resid|fresh] [--rounds 5] [--eager] [--no-pool] [--profile]
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/profile_cache.py   # torch's allocator on huge pages
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import common  # noqa: E402


def measure(fn: Callable[[], Any]) -> tuple[float, int]:
    """(CPU seconds, minor page faults) of one call; the result is dropped outside the measurement."""
    gc.collect()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.process_time()
    out = fn()
    dt = time.process_time() - t
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    del out
    return dt, faults


def held_mib(cache: Any) -> dict[str, tuple[float, bool]]:
    """MiB held per hook point (all layers summed) and whether that point is kept as a recipe.

    A recipe's inputs that are not cached values themselves (attention's post-rotary q and k) are
    listed as ``(recipe inputs)``.
    """
    import torch

    out: dict[str, list] = {}
    stored: set[int] = set()
    for k, v in cache.store.items():
        key = k.split(".", 2)[-1] if k.startswith("blocks.") else k
        ptr = v.untyped_storage().data_ptr()
        size = 0 if ptr in stored else v.untyped_storage().nbytes()  # resid_post[l] is resid_pre[l + 1]
        stored.add(ptr)
        out.setdefault(key, [0, False])[0] += size
    extra: dict[int, int] = {}
    for k, lazy in cache.pending.items():
        key = k.split(".", 2)[-1] if k.startswith("blocks.") else k
        out.setdefault(key, [0, True])[1] = True
        for t in lazy.inputs:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in stored:
                extra[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    if extra:
        out["(recipe inputs)"] = [sum(extra.values()), False]
    return {k: (v / 2**20, lazy) for k, (v, lazy) in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eager", action="store_true", help="no recipes: every derived value computed in the forward")
    ap.add_argument("--config", choices=("every", "resid", "fresh"), default="every",
                    help="what to time against the floor (default: every hook)")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators")
    ap.add_argument("--no-pool", action="store_true", help="no cache pool: values stay in the model's own tensors")
    args = ap.parse_args()
    import torch

    import uncover
    from uncover.hooks.cache import Recorder
    from uncover.hooks.tokens import Batch

    if args.eager:  # a benchmark-only switch: the recorder refuses every recipe
        Recorder.defer = lambda self, *a, **k: False  # type: ignore[method-assign]
        Recorder.formula = lambda self, *a, **k: None  # type: ignore[method-assign]
    torch.set_num_threads(args.threads)
    m = uncover.load()
    m.cache_pool.enabled = not args.no_pool
    ids = common.make_input_ids(m.tokenizer, 8, 64)
    batch = Batch(ids, torch.ones_like(ids))

    def floor() -> Any:
        return m.model(input_ids=ids, attention_mask=batch.attention_mask, use_cache=False).logits

    def every() -> Any:
        return m.run_with_cache(batch, names=None)

    def resid() -> Any:
        return m.run_with_cache(batch, names=lambda n: any(p in n for p in ("resid", "attn_out", "mlp_out", "embed")))

    with torch.no_grad():
        for f in (floor, every, floor, every):
            f()
        _, cache = every()
        sizes = held_mib(cache)
        total = sum(v for v, _ in sizes.values())
        print(f"{len(cache.store)} tensors cached + {len(cache.pending)} recipes, {total:.0f} MiB held; "
              "MiB per hook point (all layers):")
        for k, (v, lazy) in sorted(sizes.items(), key=lambda x: -x[1][0]):
            print(f"  {k:32s} {v:7.1f}{'  lazy' if lazy else ''}")
        distinct = {t.untyped_storage().data_ptr(): t for k, t in cache.store.items() if k != "logits"}
        shapes = [(t.untyped_storage().nbytes() // t.element_size(), t.dtype) for t in distinct.values()]
        del cache

        def fresh() -> Any:
            return [torch.empty(n, dtype=d).fill_(1) for n, d in shapes]

        label, fn = {"every": ("every hook", every), "resid": ("residual hooks", resid),
                     "fresh": ("fresh memory", fresh)}[args.config]
        calls: dict[str, Callable[[], Any]] = {"floor": floor, label: fn}
        cpu: dict[str, list[float]] = {k: [] for k in calls}
        faults: dict[str, list[int]] = {k: [] for k in calls}
        for _ in range(args.rounds):
            for k, f in calls.items():
                dt, fl = measure(f)
                cpu[k].append(dt)
                faults[k].append(fl)
        base = statistics.median(cpu["floor"])
        base_f = statistics.median(faults["floor"])
        thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
        print(f"\nper call, median of {args.rounds} rounds ({args.threads} thread(s), recipes "
              f"{'off' if args.eager else 'on'}, pool {'off' if args.no_pool else 'on'}, THP_MEM_ALLOC_ENABLE={thp}):")
        for k in calls:
            c, fl = statistics.median(cpu[k]), statistics.median(faults[k])
            print(f"  {k:16s} {c * 1e3:7.0f} ms CPU  {c / base:.3f}x the floor  {fl:8.0f} minor faults "
                  f"({fl - base_f:+.0f})")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as p:
                every()
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
