"""How a transcoder's quality moves with width and L0, on one middle layer of the embedded model.

Per-layer TopK skip transcoders of SmolLM2-135M-Instruct's layer ``--layer`` MLP at widths
``expansion x d_model`` (4, 8, 16: 2,304, 4,608 and 9,216 features) and ``k`` (= L0) 16, 32 and 64,
all trained on one harvest (``--blocks`` training blocks of 64 tokens, the first position of each
dropped) with the same optimiser settings, then scored by
:func:`uncover.transcoders.evaluate_transcoders` on held-out blocks: the fraction of the MLP
output's variance explained, the error-node size, the dead-feature share, and next-token
cross-entropy with that one MLP replaced (and zero-ablated: CE recovered). One JSON line per
configuration is printed (and appended to ``--out``) as it finishes, so a partial run keeps what it
measured.

    python docs/scripts/transcoder_widths.py [--layer 15] [--steps 250] [--threads 1] [--out rows.jsonl]

Runtime on the shared 2-core machine: see ``docs/transcoders.md``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import uncover
from uncover.data.corpus import token_blocks
from uncover.sae.train import TrainConfig
from uncover.transcoders import evaluate_transcoders, train_transcoders
from uncover.transcoders.data import harvest_pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--expansions", default="4,8,16")
    p.add_argument("--ks", default="16,32,64")
    p.add_argument("--blocks", type=int, default=256, help="training blocks of 64 tokens")
    p.add_argument("--eval-blocks", type=int, default=16, help="held-out blocks of 64 tokens")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also append each row as a JSON line to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = uncover.load()
    train = token_blocks(model, block_len=64)[: args.blocks]
    heldout = token_blocks(model, block_len=64, split="heldout")[: args.eval_blocks]
    c0 = time.process_time()
    pairs = harvest_pairs(model, [args.layer], train)
    print(f"harvested {len(pairs[0])} training tokens at layer {args.layer} ({time.process_time() - c0:.0f} s CPU)",
          flush=True)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=50, log_every=max(1, args.steps // 10),
                      checkpoint_every=0, seed=0)
    for exp in (int(e) for e in args.expansions.split(",")):
        for k in (int(v) for v in args.ks.split(",")):
            c0 = time.process_time()
            run = train_transcoders(model, [args.layer], train, cfg, expansion=exp, k=k, skip=True,
                                    batch_size=args.batch_size, pairs=pairs)
            c_train = time.process_time() - c0
            ev = evaluate_transcoders(model, run.transcoders, heldout)
            row = {"layer": args.layer, "d_sae": exp * model.cfg.d_model, "k": k, "fve": ev.fve[0],
                   "error_norm": ev.error_norm[0], "l0": ev.l0[0], "dead": ev.dead[0], "ce_clean": ev.ce_clean,
                   "ce_replaced": ev.ce_replaced, "ce_zero": ev.ce_zero, "ce_recovered": ev.ce_recovered,
                   "train_fve_last": run.metrics[-1]["fve_out"], "train_cpu_s": round(c_train, 1),
                   "eval_tokens": ev.tokens, "train_tokens": len(pairs[0]), "steps": args.steps}
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
