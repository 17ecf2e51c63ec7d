"""Benchmark: SAE training throughput and activation harvesting throughput.

Training: uncover's ``train_sae`` (TopK, d_sae = 4 x 576, k = 32, batch 1024, Adam) on a
fixed activation tensor harvested once from ``blocks.15.hook_resid_post`` of the embedded
model, in activations per second. Harvesting: ``harvest`` (which stops the forward pass
after the hook) against the floor of plain full forward passes over the same blocks, in
tokens per second. The peer, SAELens, is not installed in ``.bench-venv``; its row says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import common

HOOK = "blocks.15.hook_resid_post"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed training steps (default 20)")
    p.add_argument("--blocks", type=int, default=16, help="corpus blocks of 128 tokens to harvest (default 16)")
    p.add_argument("--no-record", action="store_true", help="do not update BENCHMARKS.md")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import uncover
    from uncover.data.corpus import token_blocks
    from uncover.sae import SAEConfig, TensorSource, TopKSAE, TrainConfig, harvest, train_sae

    torch.set_grad_enabled(False)
    model = uncover.load()
    blocks = token_blocks(model, block_len=128)[: args.blocks]
    n_tok = blocks.numel()

    def fwd() -> None:
        for i in range(0, len(blocks), 8):
            model.model(input_ids=blocks[i : i + 8], use_cache=False)

    acts: list[torch.Tensor] = []

    def harv() -> None:
        acts[:] = [harvest(model, HOOK, blocks, batch_size=8, skip_first=0)]

    fwd()
    t_fwd = statistics.median(common.timed(fwd)[0] for _ in range(3))
    t_h = statistics.median(common.timed(harv)[0] for _ in range(3))
    x = acts[0]
    rows = [["plain forward passes (floor), full model", f"{n_tok / t_fwd:,.0f} tokens/s", ""],
            [f"uncover harvest at {HOOK} (stops after the hook)", f"{n_tok / t_h:,.0f} tokens/s",
             f"{t_fwd / t_h:.2f}× the floor"]]
    cfg = SAEConfig(d_in=x.shape[1], d_sae=4 * x.shape[1], architecture="topk", k=32, hook_name=HOOK)
    src = TensorSource(x, 1024)
    tcfg = TrainConfig(steps=args.steps, log_every=args.steps, checkpoint_every=0)
    torch.set_grad_enabled(True)
    train_sae(TopKSAE(cfg), src, TrainConfig(steps=3, checkpoint_every=0), progress=False)  # warm-up
    r = train_sae(TopKSAE(cfg), src, tcfg, progress=False)
    rows.append([f"uncover train_sae, TopK {cfg.d_sae} latents, k=32, batch 1024", f"{r.tokens / r.seconds:,.0f} "
                 "activations/s", f"final FVE {r.metrics[-1]['fve']:.3f} after {args.steps} steps"])
    try:
        import sae_lens  # noqa: F401
    except ImportError:
        rows.append(["SAELens: skipped (sae-lens is not installed in .bench-venv)", "", ""])
    headers = ["configuration", "throughput", "note"]
    body = common.table(headers, rows, [False, True, False])
    print(body)
    if not args.no_record:
        section = f"bench_sae ({common.env_label()})"
        extra = f"{args.blocks} blocks x 128 tokens of the embedded corpus; {len(x)} activations of width {x.shape[1]}"
        common.record(section, "\n".join([f"## {section}", "", *common.header_lines(extra), "", body, ""]))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
