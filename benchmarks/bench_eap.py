"""Benchmark: EAP over every edge of the embedded model on an IOI batch, vs one forward+backward.

uncover's ``eap`` (one clean forward+backward, one corrupt forward, the per-receiver
gradient pull-back and the ``[senders, receivers]`` score product; 70,651 edges) and
EAP-IG with its interpolation steps, each timed alternately with one plain Hugging Face
forward+backward of the same clean batch (gradient w.r.t. the input embeddings, the
model's weights being frozen). Goal: EAP ≤ 10× the forward+backward.
"""

from __future__ import annotations

import argparse
import os
import time

import common

GOAL = 10.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=8, help="IOI pairs in the batch (default 8)")
    p.add_argument("--steps", type=int, default=5, help="EAP-IG steps (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of EAP (default 3)")
    p.add_argument("--ig-repeats", type=int, default=1, help="timed rounds of EAP-IG, no warm-up (default 1)")
    p.add_argument("--no-record", action="store_true", help="do not update BENCHMARKS.md")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import uncover
    from uncover.circuits.eap import eap
    from uncover.circuits.prompts import Prompts
    from uncover.data.tasks import ioi

    model = uncover.load()
    task = ioi(2 * args.prompts, seed=0).filter_correct(model)
    prompts = Prompts.from_task(model, task, args.prompts)
    ids, mask = prompts.clean.input_ids, prompts.clean.attention_mask
    last = prompts.last

    def forward_backward() -> None:
        with torch.enable_grad():
            e = model.model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model.model(inputs_embeds=e, attention_mask=mask, use_cache=False).logits
            rows = torch.arange(ids.shape[0])
            (logits[rows, last, prompts.answer] - logits[rows, last, prompts.wrong]).mean().backward()

    configs = [("EAP, every edge", lambda: eap(model, prompts), args.repeats, 1),
               (f"EAP-IG, {args.steps} steps in one batch", lambda: eap(model, prompts, method="eap-ig",
                                                                         steps=args.steps), args.ig_repeats, 0)]
    rows = []
    for label, fn, repeats, warmup in configs:
        t = common.time_paired(fn, forward_backward, repeats=repeats, warmup=warmup)
        goal = f"≤ {GOAL:.0f}× {'met' if t.ratio <= GOAL else 'MISSED'}" if label.startswith("EAP,") else ""
        rows.append([label, common.fmt_ms(t.median), common.fmt_ms(t.floor_median), f"{t.ratio:.2f}×",
                     f"{t.cpu_ratio:.2f}×", goal])
        print(rows[-1], flush=True)
    headers = ["configuration", "median ms", "fwd+bwd ms", "wall ratio", "CPU ratio", "goal"]
    body = common.table(headers, rows, [False, True, True, True, True, False])
    print(body)
    if not args.no_record:
        section = f"bench_eap ({common.env_label()})"
        extra = (f"{prompts.n} IOI prompts ({ids.shape[1]} tokens, right-padded), 70,651 edges; floor: one HF "
                 "forward+backward of the clean batch (gradient w.r.t. input embeddings)")
        common.record(section, "\n".join([f"## {section}", "", *common.header_lines(extra), "", body, ""]))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
