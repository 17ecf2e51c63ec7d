"""Benchmark: attribution patching of every site of one IOI pair, and causal tracing of one fact.

- uncover ``attribution_patching_sites`` over all (layer, position) sites of ``resid_pre``,
  ``attn_out``, ``mlp_out`` and all (layer, head) and (layer, head, position) sites of ``z``,
  timed alternately with one plain forward + backward of the HF model (logit difference at the
  last position, back to the input embeddings: ``uncover.load()`` freezes the weights); goal ≤ 3×.
- Exact activation patching of the same (layer, position) and (layer, head) grids next to it,
  with the Pearson correlation of the two.
- Causal tracing (hidden, MLP and attention restorations, ROME's 10 noise samples) of one fact,
  next to the time a naive loop of one forward pass per restoration would take (extrapolated
  from timed single restorations).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import common

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
FACT, SUBJECT, OBJECT = "The Eiffel Tower is in the city of", "The Eiffel Tower", " Paris"
GOAL = 3.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of attribution patching (default 5)")
    p.add_argument("--samples", type=int, default=10, help="causal-tracing noise samples (default 10)")
    p.add_argument("--no-record", action="store_true", help="do not update BENCHMARKS.md")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import uncover
    from uncover import Replace
    from uncover.attribution.attribution_patching import SITES, attribution_patching_sites, pearson
    from uncover.patching.activation import activation_patching
    from uncover.patching.causal_tracing import causal_trace, noise_hook, noise_scale, subject_noise

    model = uncover.load()
    a, w = model.to_single_token(" Mary"), model.to_single_token(" John")
    ids = model.to_tokens(CORRUPT)

    def attribution():
        return attribution_patching_sites(model, CLEAN, CORRUPT, a, w, sites=SITES, normalise=False)

    def forward_backward() -> None:
        # uncover.load() freezes the weights, so the plain backward pass goes to the input embeddings
        emb = model.model.get_input_embeddings()(ids).detach().requires_grad_(True)
        out = model.model(inputs_embeds=emb, use_cache=False).logits[0, -1]
        (out[a] - out[w]).backward()

    paired = common.time_paired(attribution, forward_backward, repeats=args.repeats, warmup=1)
    rows = [["one HF forward + backward (reference)", common.fmt_ms(paired.floor_median), "1.0×", "", ""],
            ["uncover attribution patching, all 5 grids (one forward each prompt + one backward)",
             common.fmt_ms(paired.median), f"{paired.ratio:.2f}×",
             f"≤ {GOAL:.0f}× {'met' if paired.ratio <= GOAL else 'MISSED'}", ""]]
    approx = attribution()
    with torch.no_grad():
        for hook, per in SITES[:4]:
            t0 = time.perf_counter()
            exact = activation_patching(model, CLEAN, CORRUPT, a, w, hook=hook, per=per, normalise=False)
            dt = time.perf_counter() - t0
            r = pearson(exact.grid[..., exact.first_diff:] if per == "pos" else exact.grid,
                        approx[(hook, per)].grid[..., exact.first_diff:] if per == "pos" else approx[(hook, per)].grid)
            rows.append([f"exact activation patching, {hook} per {per}", common.fmt_ms(dt),
                         f"{dt / paired.floor_median:.1f}×", "", f"{r:.3f}"])

        t0 = time.perf_counter()
        trace = causal_trace(model, FACT, SUBJECT, OBJECT, kind="all", samples=args.samples)
        t_trace = time.perf_counter() - t0
        # naive: one forward pass per (kind, layer, position, sample); time a few and extrapolate
        subj, n, n_pos = trace.subject, model.cfg.n_layers, len(trace.str_tokens)
        eps = subject_noise(model, 1, len(subj), noise_scale(model))
        name = "blocks.10.hook_mlp_out"
        _, clean = model.run_with_cache(FACT, names=[name])
        one = [Replace(name, source=clean[name], positions=[subj[-1]])]

        def naive_one() -> None:
            with model.hooks([("hook_embed", noise_hook(subj, eps))]), model.intervene(one):
                model(FACT)

        naive_one()
        t_one = statistics.median(common.timed(naive_one)[0] for _ in range(10))
        t_naive = t_one * 3 * n * (n_pos - subj[0]) * args.samples
    rows.append([f"causal tracing of one fact ({n_pos} tokens, hidden+MLP+attn, {args.samples} samples)",
                 common.fmt_ms(t_trace), f"{t_trace / paired.floor_median:.0f}×", "", ""])
    rows.append([f"  naive loop, one forward per restoration ({3 * n * (n_pos - subj[0]) * args.samples} passes, "
                 "extrapolated)", common.fmt_ms(t_naive), f"{t_naive / paired.floor_median:.0f}×",
                 f"uncover {t_naive / t_trace:.1f}× faster", ""])
    headers = ["configuration", "median ms", "× forward+backward", "goal", "Pearson r vs attribution"]
    body = common.table(headers, rows, [False, True, True, False, True])
    print(body)
    if not args.no_record:
        section = f"bench_attribution ({common.env_label()})"
        extra = (f"one IOI pair ({ids.shape[1]} tokens); causal tracing of {FACT!r} → {OBJECT!r}; "
                 f"attribution ratio = median of per-round ratios ({args.repeats} rounds, CPU ratio "
                 f"{paired.cpu_ratio:.2f}×)")
        common.record(section, "\n".join([f"## {section}", "", *common.header_lines(extra), "", body, ""]))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
