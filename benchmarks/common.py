"""Shared helpers for the benchmarks: inputs, timing, memory, machine facts and BENCHMARKS.md.

Kept free of heavy imports (torch, transformers) at module level so that the
orchestrating process of each benchmark starts fast; the workers import what they need.
"""

from __future__ import annotations

import datetime as _dt
import gc
import importlib.metadata as md
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
RESULT_TAG = "BENCH_RESULT "
"""A worker prints its result as one line: this tag, then JSON."""

# Fixed English text for the inputs (each row starts at a different sentence).
SENTENCES: tuple[str, ...] = (
    "The Eiffel Tower was finished in 1889 and is still the most visited monument in Paris.",
    "Most of the water on Earth is salty, and only a small part of the rest is easy to reach.",
    "When the train finally arrived, the passengers hurried onto the platform with their bags.",
    "She opened the old book carefully, because its pages were thin and had turned yellow.",
    "A good cup of tea needs fresh water, a warm pot and a few minutes of patience.",
    "The committee will meet again next Tuesday to discuss the budget for the coming year.",
    "Bees visit thousands of flowers every day and carry pollen from one plant to another.",
    "He forgot his umbrella at home, so he waited under the bridge until the rain stopped.",
    "Mathematics describes patterns, and physics uses those patterns to explain the world.",
    "The children built a castle of sand near the sea and watched the tide wash it away.",
    "In the winter the lake freezes over, and people from the village go skating on it.",
    "Our neighbour grows tomatoes, beans and potatoes in a small garden behind the house.",
    "The museum was closed on Monday, so the tourists walked along the river instead.",
    "Computers store numbers in binary, using only the digits zero and one.",
    "After dinner the family sat by the fire and told stories about their grandparents.",
    "The library lends books, films and music, and it is free for everyone in the town.",
)


# ---- inputs ------------------------------------------------------------------------------
def make_input_ids(tokenizer: Any, batch: int, seq: int) -> Any:
    """``[batch, seq]`` token ids of real English text, every row exactly ``seq`` tokens long.

    Row ``i`` is the sentence list rotated by ``i`` (repeated if needed), tokenised without
    special tokens and cut to ``seq`` tokens, so there is no padding anywhere.
    """
    import torch

    rows = []
    n = len(SENTENCES)
    for i in range(batch):
        order = [SENTENCES[(i + j) % n] for j in range(n)]
        ids: list[int] = []
        while len(ids) < seq:
            ids += tokenizer(" ".join(order), add_special_tokens=False)["input_ids"]
        rows.append(ids[:seq])
    return torch.tensor(rows, dtype=torch.long)


# ---- timing ------------------------------------------------------------------------------
@dataclass
class Paired:
    """Wall and CPU times (seconds) of a configuration and of the floor, timed in alternating rounds."""

    times: list[float]
    floor_times: list[float]
    cpu: list[float]
    floor_cpu: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def floor_median(self) -> float:
        return statistics.median(self.floor_times)

    @property
    def ratio(self) -> float:
        """Median over rounds of (configuration wall time / floor wall time of the same round).

        Each round times the two back to back, so slow spells caused by other work on the
        machine hit both and cancel; the ratio of the two medians is less robust to that.
        """
        return statistics.median(x / y for x, y in zip(self.times, self.floor_times))

    @property
    def cpu_ratio(self) -> float:
        """Median over rounds of the CPU-time quotient (all threads of the process).

        CPU time counts the work done, not the waiting for a core, so it hardly moves when
        other processes compete for the machine (on an idle machine it tracks wall time).
        """
        return statistics.median(x / y for x, y in zip(self.cpu, self.floor_cpu))


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; the result is dropped and garbage collected outside the timing."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    dc = time.process_time() - c0
    del out
    gc.collect()
    return dt, dc


def time_paired(fn: Callable[[], Any], floor: Callable[[], Any], repeats: int, warmup: int) -> Paired:
    """Time ``fn`` and ``floor`` alternately (order swapped each round) after ``warmup`` rounds.

    Interleaving makes the ratio robust to drift on a busy machine (thermal, other load).
    """
    for _ in range(warmup):
        timed(floor)
        timed(fn)
    p = Paired([], [], [], [])
    for i in range(repeats):
        if i % 2:
            a, b = timed(fn), timed(floor)
        else:
            b, a = timed(floor), timed(fn)
        p.times.append(a[0])
        p.cpu.append(a[1])
        p.floor_times.append(b[0])
        p.floor_cpu.append(b[1])
    return p


# ---- memory ------------------------------------------------------------------------------
def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return _status_kb("VmRSS") / 1024


def _status_kb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; ``False`` where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (since the last :func:`reset_peak_rss`)."""
    try:
        return _status_kb("VmHWM") / 1024
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- environment -------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: CPU model, usable cores, memory."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = ""
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        pass
    return f"{cpu_model()}, {cores} cores{mem}, {platform.system()} {platform.machine()}"


VERSIONED = ("torch", "transformers", "uncover", "transformer-lens", "nnsight")


def versions() -> dict[str, str]:
    """Versions of python and the libraries benchmarked (``absent`` when not installed)."""
    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "absent"
    return out


def env_label() -> str:
    """Name of the running environment (the venv folder), used to key BENCHMARKS.md sections."""
    return Path(sys.prefix).name


def quiet_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for worker processes: offline hub, no progress bars, no tokenizer threads."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra or {})
    return env


def run_worker(args: Sequence[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``python <args>`` in a fresh process and return the JSON it printed after RESULT_TAG.

    On failure returns ``{"error": <last lines of stderr>}`` instead of raising.
    """
    try:
        p = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (p.stderr or p.stdout).strip().splitlines()[-6:]
    return {"error": f"worker exited {p.returncode}: " + " | ".join(tail)}


def emit(result: dict[str, Any]) -> None:
    """Print a worker's result line (read by :func:`run_worker`)."""
    sys.stdout.flush()
    print(RESULT_TAG + json.dumps(result), flush=True)


# ---- output ------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """A Markdown pipe table with padded columns (readable as plain text too)."""
    right = list(right) if right is not None else [False] * len(headers)
    cells = [list(headers)] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if ra else ("-" * (w + 2)) for w, ra in zip(widths, right)) + "|"
    return "\n".join([fmt(cells[0]), sep, *(fmt(r) for r in cells[1:])])


def header_lines(extra: str = "") -> list[str]:
    """Date, machine and versions, as Markdown bullet lines."""
    v = versions()
    vs = ", ".join(f"{k} {val}" for k, val in v.items())
    lines = [
        f"- date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {machine()}",
        f"- environment: `{env_label()}` ({vs})",
    ]
    if extra:
        lines.append(f"- {extra}")
    return lines


INTRO = """# Benchmarks

Numbers measured with the scripts in `benchmarks/` (how they measure: `benchmarks/README.md`).
Reproduce them with the peer libraries (TransformerLens, nnsight) in their own environment:

```bash
bash benchmarks/setup_bench_env.sh          # creates .bench-venv (CPU torch 2.13.0 + peers)
.bench-venv/bin/python benchmarks/bench_load.py
.bench-venv/bin/python benchmarks/bench_cache.py
.bench-venv/bin/python benchmarks/bench_cache.py --keep-freed-memory
```

Each run replaces its own section below (one per script, environment and memory setting).
Times are wall-clock medians on the machine named in the section; ratios are to the plain
Hugging Face forward timed alternately with it in the same process. On a shared 2-core
machine the times move with other work (rows where that happened get a note), and caching
ratios also move by a few percent between runs with how the allocator hands out memory:
the `--keep-freed-memory` section removes that part and leaves the cost of the hooks.
"""


def record(section: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section ``section`` of BENCHMARKS.md with ``body``."""
    start, end = f"<!-- {section}: start -->", f"<!-- {section}: end -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else INTRO
    pat = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pat.search(text):
        text = pat.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text)


def fmt_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.1f}"


def fmt_s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.2f}"


def fmt_mb(mb: float | None) -> str:
    return "—" if mb is None else f"{mb:.0f}"
