"""Benchmark: one ROME edit on the embedded model, after and including the cached key statistics.

Times (wall and process CPU seconds) of: one plain forward pass of the edit prompt (reference),
the second moment of the edited layer's keys over ``--tokens`` corpus tokens (computed once per
model and layer, then cached), and one ROME edit with the statistics cached (goal ≤ 5 s on this
CPU). CPU seconds count the work done, not the wait for a core, so they are the fairer number on
a shared machine. Also one knowledge-neuron edit of the same fact (integrated gradients over the
upper half of the layers, then the value-change search), which needs no statistics.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import common

PROMPT, SUBJECT, TARGET = "{} is in the city of", "The Eiffel Tower", " Rome"
GOAL_S = 5.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=20_000, help="corpus tokens for the key statistics (default 20000)")
    p.add_argument("--repeats", type=int, default=1, help="timed edits (default 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared machine more threads spin-wait for cores)")
    p.add_argument("--no-record", action="store_true", help="do not update BENCHMARKS.md")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import uncover
    from uncover.editing import kn_edit, rome, rome_layer

    torch.set_num_threads(args.threads)
    from uncover.editing.stats import layer_mom2

    model = uncover.load()
    layer = rome_layer(model)
    text = PROMPT.format(SUBJECT)

    def forward() -> None:
        with torch.no_grad():
            model(text)

    forward()
    fwd = [common.timed(forward) for _ in range(5)]
    rows = [["one forward pass of the edit prompt (reference)", common.fmt_ms(statistics.median(w for w, _ in fwd)),
             common.fmt_ms(statistics.median(c for _, c in fwd)), ""]]
    with tempfile.TemporaryDirectory() as cache:
        w, c = common.timed(lambda: layer_mom2(model, layer, mom2_samples=args.tokens, cache=cache, progress=False))
        rows.append([f"key statistics, layer {layer}, {args.tokens} tokens (once per model and layer)",
                     common.fmt_s(w), common.fmt_s(c), ""])
        times = []
        out: dict = {}

        def edit() -> None:
            out["e"] = rome(model, PROMPT, SUBJECT, TARGET, layer=layer, mom2_samples=args.tokens, cache=cache,
                            progress=False)

        for _ in range(args.repeats):
            times.append(common.timed(edit))
            e = out["e"]
            steps = len(e.options["nll"])
            e.revert()
        w, c = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
        verdict = f"≤ {GOAL_S:.0f} s {'met' if w <= GOAL_S else 'MISSED'} (wall)"
        rows.append([f"ROME edit, statistics cached ({steps} optimisation steps)", common.fmt_s(w), common.fmt_s(c),
                     verdict])
    kn: dict = {}

    def kn_once() -> None:
        kn["e"] = kn_edit(model, PROMPT, SUBJECT, TARGET, old=" Paris")

    w, c = common.timed(kn_once)
    e = kn["e"]
    e.revert()
    rows.append([f"knowledge-neuron edit: IG over layers {e.options['attributed_layers'][0]}–"
                 f"{e.options['attributed_layers'][-1]} ({e.options['steps']} steps) + λ search, "
                 f"{len(e.options['neurons'])} neurons", common.fmt_s(w), common.fmt_s(c), ""])
    body = common.table(["step", "wall", "CPU", "goal"], rows, [False, True, True, False])
    print(body)
    if not args.no_record:
        section = f"bench_editing ({common.env_label()})"
        extra = (f"ROME {SUBJECT!r} → {TARGET!r} at layer {layer}, torch threads {torch.get_num_threads()}, "
                 f"load average at the end {os.getloadavg()[0]:.1f}")
        common.record(section, "\n".join([f"## {section}", "", *common.header_lines(extra), "", body, ""]))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
