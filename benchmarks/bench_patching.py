"""Benchmark: a full residual activation-patching sweep (every layer × position) on one IOI pair.

uncover's ``activation_patching(hook="resid_pre")`` against TransformerLens's
``patching.get_act_patch_resid_pre`` on the same embedded model, in the same process, with
the ratio of times and the largest difference between the two grids (goal: ≥ 20× faster,
values equal to ±1e-4). Peers live in ``.bench-venv`` (``benchmarks/setup_bench_env.sh``).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import common

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
GOAL = 20.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="timed sweeps per library (default 3)")
    p.add_argument("--no-record", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: uncover.load's choice)")
    p.add_argument("--model", default=None, help="model to load (default: the embedded SmolLM2-135M-Instruct)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import uncover
    from uncover.patching.activation import activation_patching

    torch.set_grad_enabled(False)
    model = uncover.load(args.model, device=args.device)
    card = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else ""
    a, w = model.to_single_token(" Mary"), model.to_single_token(" John")

    def sync() -> None:  # CUDA runs asynchronously: time the work, not its launch
        if card:
            torch.cuda.synchronize(model.device)

    def run_uncover() -> torch.Tensor:
        grid = activation_patching(model, CLEAN, CORRUPT, a, w, normalise=False).grid
        sync()
        return grid

    def forward() -> None:
        model.model(model.to_tokens(CORRUPT), use_cache=False)
        sync()

    rows = []
    forward()
    t_fwd = statistics.median(common.timed(forward)[0] for _ in range(5))
    ours = run_uncover()
    t_ours = statistics.median(common.timed(run_uncover)[0] for _ in range(args.repeats))
    rows.append(["one forward pass (reference)", common.fmt_ms(t_fwd), "", "", ""])
    rows.append(["uncover activation_patching, resid_pre sweep", common.fmt_ms(t_ours), "", "", ""])
    try:
        from transformer_lens import patching
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as e:
        hint = "run in .bench-venv: bash benchmarks/setup_bench_env.sh"
        rows.append([f"TransformerLens: skipped ({e.name} not installed; {hint})", "", "", "", ""])
    else:
        hf, tok = copy.deepcopy(model.model), copy.deepcopy(model.tokenizer)
        bridge = TransformerBridge.boot_transformers(
            "HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=hf, tokenizer=tok, device=str(model.device),
            dtype=hf.dtype,
        )
        clean_ids, corrupt_ids = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
        _, clean_cache = bridge.run_with_cache(clean_ids)

        def metric(logits: torch.Tensor) -> torch.Tensor:
            return logits[0, -1, a] - logits[0, -1, w]

        def run_tl() -> torch.Tensor:
            out = patching.get_act_patch_resid_pre(bridge, corrupt_ids, clean_cache, metric)
            sync()
            return out

        theirs = run_tl()
        t_tl = statistics.median(common.timed(run_tl)[0] for _ in range(max(1, args.repeats - 1)))
        diff = float((theirs.float().cpu() - ours.cpu()).abs().max())
        ratio = t_tl / t_ours
        verdict = f"≥ {GOAL:.0f}× {'met' if ratio >= GOAL else 'MISSED'}"
        rows.append(["TransformerLens get_act_patch_resid_pre", common.fmt_ms(t_tl), f"{ratio:.1f}×", verdict,
                     f"{diff:.1e}"])
    headers = ["configuration", "median ms", "uncover speed-up", "goal", "max abs Δ grid"]
    body = common.table(headers, rows, [False, True, True, False, True])
    print(f"bench_patching on {card or 'the CPU'}" + (f", model {args.model}" if args.model else ""))
    print(body)
    if not args.no_record:
        section = f"bench_patching ({common.env_label()}{', ' + card if card else ''})"
        extra = f"one IOI pair ({ours.shape[1]} tokens), grid {tuple(ours.shape)} of logit differences"
        if card:
            extra += f", device {model.device} ({card})" + (f", model {args.model}" if args.model else "")
        common.record(section, "\n".join([f"## {section}", "", *common.header_lines(extra), "", body, ""]))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
