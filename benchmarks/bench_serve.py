"""Benchmark: the web workbench (``uncover serve``) on the embedded model.

1. Time to first page: ``uncover serve`` started as a fresh process (model cached), until the URL is printed,
   the page is served and the first API call (``/api/model``) answers.
2. Prompt-view latency for a 20-token prompt (tokens, next-token top-k, logit lens at every position, every
   head's pattern, DLA of the top two tokens), through the real app (the framework's test client: routing,
   the worker queue, JSON), against the plain forward passes it needs (three: one cached forward for the
   logits and patterns, the lens's forward, DLA's forward), timed alternately in the same process.
   Goal: the view within 1.5x those forwards plus 150 ms. Also the view with the lens read at the last
   position only (the full heatmap unembeds every layer at every position: 620 rows for 20 tokens).

Prints a table; ``--record`` is not offered: BENCHMARKS.md is shared, its section is pasted by hand.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import common

PROMPT_WORDS = ("The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden "
                "gate near the river")
GOAL_RATIO, GOAL_MS = 1.5, 150.0


def first_page(port: int, threads: int, timeout: float = 300.0) -> dict[str, float]:
    """Seconds from starting ``uncover serve`` to the printed URL, the page and the first API answer."""
    exe = Path(sys.executable).with_name("uncover")
    with tempfile.TemporaryDirectory() as results:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--results", results], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = proc.stdout.readline()
            t_url = time.perf_counter() - t0
            m = re.search(r"(http://\S+)/\?token=(\S+)", line)
            if not m:
                raise RuntimeError(f"no URL in {line!r}")
            base, token = m.group(1), m.group(2)
            t_page = t_api = None
            while time.perf_counter() - t0 < timeout:
                try:
                    if t_page is None:
                        urllib.request.urlopen(base + "/", timeout=5).read()
                        t_page = time.perf_counter() - t0
                    req = urllib.request.Request(base + "/api/model", headers={"X-Uncover-Token": token})
                    urllib.request.urlopen(req, timeout=30).read()
                    t_api = time.perf_counter() - t0
                    break
                except OSError:
                    time.sleep(0.02)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"url": t_url, "page": t_page, "api": t_api}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="timed rounds of the prompt view (default 7)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    p.add_argument("--port", type=int, default=18765, help="port of the started server (default 18765)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from fastapi.testclient import TestClient

    import uncover
    from uncover.serve import create_app

    torch.set_num_threads(args.threads)
    start = first_page(args.port, args.threads)
    model = uncover.load()
    ids = model.to_tokens(PROMPT_WORDS)[0][:20]
    prompt = "".join(model.to_str_tokens(ids))
    assert len(model.to_tokens(prompt)[0]) == 20, "the prompt must be 20 tokens"
    with tempfile.TemporaryDirectory() as results:
        app = create_app(model, results, token="bench")
        client = TestClient(app, base_url="http://127.0.0.1:8765", headers={"X-Uncover-Token": "bench"})

        def view(where: str = "all") -> None:
            r = client.post("/api/prompt", json={"prompt": prompt, "lens_positions": where})
            assert r.status_code == 200, r.text

        def forwards() -> None:
            with torch.no_grad():
                for _ in range(3):
                    model(ids[None])

        paired = common.time_paired(view, forwards, args.repeats, warmup=1)
        last = common.time_paired(lambda: view("last"), forwards, args.repeats, warmup=1)
        app.state.server.worker.close()
    v, f = statistics.median(paired.times), statistics.median(paired.floor_times)
    vc, fc = statistics.median(paired.cpu), statistics.median(paired.floor_cpu)
    limit = GOAL_RATIO * f + GOAL_MS / 1e3
    lw, lc = statistics.median(last.times), statistics.median(last.cpu)
    llimit = GOAL_RATIO * statistics.median(last.floor_times) + GOAL_MS / 1e3
    rows = [
        ["`uncover serve` started -> URL printed (model loaded)", common.fmt_s(start["url"]), "", ""],
        ["-> page served", common.fmt_s(start["page"]), "", ""],
        ["-> first API answer (/api/model, weights fingerprint)", common.fmt_s(start["api"]), "", ""],
        ["3 plain forward passes, 20 tokens (reference)", common.fmt_s(f), common.fmt_s(fc), ""],
        ["prompt view, 20 tokens (through the app)", common.fmt_s(v), common.fmt_s(vc),
         f"≤ 1.5× + 150 ms = {limit:.2f} s: {'met' if v <= limit else 'MISSED'} "
         f"({paired.ratio:.2f}× wall, {paired.cpu_ratio:.2f}× CPU)"],
        ["prompt view, lens at the last position only", common.fmt_s(lw), common.fmt_s(lc),
         f"≤ {llimit:.2f} s: {'met' if lw <= llimit else 'MISSED'} "
         f"({last.ratio:.2f}× wall, {last.cpu_ratio:.2f}× CPU)"],
    ]
    body = common.table(["step", "wall s", "CPU s", "goal"], rows, [False, True, True, False])
    print("\n".join(common.header_lines(f"torch threads {args.threads}, {args.repeats} rounds, load average at the "
                                        f"end {os.getloadavg()[0]:.1f}")))
    print()
    print(body)


if __name__ == "__main__":
    main()
