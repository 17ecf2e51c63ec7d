"""Benchmark: Wanda and SparseGPT (and magnitude) pruning time on the embedded model at 50% sparsity.

Each is timed once (a pruning is a one-shot job) next to the plain forward pass of the same
calibration batch (16 × 128 tokens of the corpus's train split), with the held-out perplexity of
the pruned model. Goal: Wanda 50% ≤ 30 s on this CPU. Run with the project's own environment:
``.venv/bin/python benchmarks/bench_pruning.py``.
"""

from __future__ import annotations

import argparse
import os
import time

import common

GOAL_WANDA_S = 30.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calib", type=int, default=16, help="calibration blocks of 128 tokens (default 16)")
    p.add_argument("--eval-blocks", type=int, default=8, help="held-out blocks for perplexity (default 8)")
    p.add_argument("--no-record", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument("--table", action="store_true",
                   help="instead: the perplexity grid of docs/pruning.md (0/30/50/60%% and 2:4, three methods)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import uncover
    from uncover.pruning import prune
    from uncover.pruning.calibrate import calibration_tokens
    from uncover.pruning.evaluate import heldout_tokens, perplexity

    torch.set_grad_enabled(False)
    model = uncover.load()
    cal = calibration_tokens(model, args.calib, 128)
    ev = heldout_tokens(model, args.eval_blocks)

    if args.table:
        print(quality_table(model, cal, ev))
        return

    def forward() -> None:
        model.model(input_ids=cal, attention_mask=torch.ones_like(cal), use_cache=False)

    forward()
    t_fwd, c_fwd = min(common.timed(forward) for _ in range(2))
    rows = [["plain forward of the calibration batch (reference)", common.fmt_s(t_fwd), common.fmt_s(c_fwd),
             "1.0×", "", "", ""]]
    dense = perplexity(model, ev)
    rows.append(["dense model", "", "", "", "0.000", f"{dense:.2f}", ""])
    for method in ("magnitude", "wanda", "sparsegpt"):
        opts = {} if method == "magnitude" else {"tokens": cal}
        c0, t0 = time.process_time(), time.perf_counter()
        pr = prune(model, method, 0.5, **opts)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        ppl = perplexity(model, ev)
        pr.revert()
        goal = ""
        if method == "wanda":
            goal = f"≤ {GOAL_WANDA_S:.0f} s {'met' if dt <= GOAL_WANDA_S else 'MISSED'}"
        rows.append([f"{method} 50%", common.fmt_s(dt), common.fmt_s(dc), f"{dt / t_fwd:.1f}×",
                     f"{pr.overall_sparsity():.3f}", f"{ppl:.2f}", goal])
    headers = ["configuration", "wall s", "CPU s", "× forward (wall)", "sparsity", "held-out ppl", "goal"]
    body = common.table(headers, rows, [False, True, True, True, True, True, False])
    print(body)
    if not args.no_record:
        section = f"bench_pruning ({common.env_label()})"
        load = os.getloadavg()[0]
        extra = (f"load average {load:.1f} on this machine at the end of the run; "
                 f"calibration {args.calib} × 128 tokens (train split), perplexity on {args.eval_blocks} × 128 "
                 f"held-out tokens; {torch.get_num_threads()} torch threads; each pruning timed once, "
                 "including its calibration passes")
        common.record(section, "\n".join([f"## {section}", "", *common.header_lines(extra), "", body, ""]))


def quality_table(model, cal, ev) -> str:  # noqa: ANN001
    """Markdown table: held-out perplexity (fact accuracy) per method and sparsity."""
    from uncover.pruning import prune
    from uncover.pruning.evaluate import fact_accuracy, perplexity

    settings = [(0.3, None), (0.5, None), (0.6, None), (None, "2:4")]
    header = ["method", "0% (dense)"] + [pat or f"{s:.0%}" for s, pat in settings]
    dense = f"{perplexity(model, ev):.2f} ({fact_accuracy(model):.0%})"
    rows = []
    for method in ("magnitude", "wanda", "sparsegpt"):
        row = [method, dense]
        for s, pat in settings:
            pr = prune(model, method, s, pat, **({} if method == "magnitude" else {"tokens": cal}))
            row.append(f"{perplexity(model, ev):.2f} ({fact_accuracy(model):.0%})")
            pr.revert()
            print(row, flush=True)
        rows.append(row)
    return common.table(header, rows)


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
