"""Benchmark: SAE training throughput against SAELens, and activation harvesting throughput.

Harvesting: ``harvest`` (which stops the forward pass after the hook) against the floor of
plain full forward passes over the same blocks, in tokens per second.

Training: one activation tensor is harvested from ``blocks.15.hook_resid_post`` of the
embedded model (train split; held-out activations from the held-out split) and saved; then
uncover's ``train_sae`` and SAELens's ``SAETrainer`` train a TopK SAE of the same shape on
exactly the same batch stream (``TensorSource(acts, batch, seed)``, step by step), with the
same d_sae, k, Adam learning rate and schedule (linear warm-up, constant, linear decay to 0
over the last 20%), batch size, number of activations, dead-latent window, input scale
(``E||x||^2 = d_in``, from the first batch, folded into the weights at the end) and torch
thread count. SAELens runs in ``.bench-venv`` (which carries ``transformer-lens`` 4, while
``sae-lens`` 6 imports TransformerLens 3: ``setup_bench_env.sh`` puts TransformerLens 3.9 in
``.bench-venv/saelens-site``, put first on ``PYTHONPATH`` for this worker only) as a
subprocess of this script: its ``SAETrainer.fit()`` is timed, the SAE is saved with its own
``save_inference_model`` and read back by uncover's ``SAE.load`` (the SAELens format), and
both SAEs are scored by the same code on the same activations. Each library keeps its own
recipe otherwise: uncover keeps decoder rows at unit norm and uses AuxK with coefficient
1/32 on the normalised error (Gao et al.); SAELens rescales activations by the decoder norm,
clips the gradient norm at 1 and uses its default AuxK coefficient (1.0, unnormalised).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common

HOOK = "blocks.15.hook_resid_post"
BENCH_VENV = common.ROOT / ".bench-venv"
SAELENS_SITE = BENCH_VENV / "saelens-site"
FVE_TOLERANCE = 0.02  # "equal final loss": held-out FVE within this of each other


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--batch-size", type=int, default=512, help="activations per step (default 512)")
    p.add_argument("--blocks", type=int, default=96, help="train-split blocks of 128 tokens to harvest (default 96)")
    p.add_argument("--heldout-blocks", type=int, default=16, help="held-out blocks for scoring (default 16)")
    p.add_argument("--floor-blocks", type=int, default=8, help="blocks for the harvest-vs-forward timing (default 8)")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--expansion", type=int, default=4, help="d_sae = expansion x 576 (default 4)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=20, help="LR warm-up steps (default 20)")
    p.add_argument("--dead-steps", type=int, default=50, help="steps without firing that make a latent dead")
    p.add_argument("--threads", type=int, default=1, help="torch threads for both trainers (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-record", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument("--saelens-worker", metavar="DIR", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _input_scale(x0) -> float:
    """uncover's input normalisation (``E||x||^2 = d_in`` on the first batch)."""
    return float((x0.shape[-1] / x0.pow(2).sum(-1).mean()).sqrt())


def saelens_worker(args: argparse.Namespace) -> None:
    """Train SAELens's TopK SAE on the saved activations (runs in .bench-venv)."""
    import itertools

    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    import sae_lens
    from sae_lens import SAETrainer, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE

    from uncover.sae.store import TensorSource

    d = Path(args.saelens_worker)
    x = load_file(d / "acts.safetensors")["acts"]
    src = TensorSource(x, args.batch_size, args.seed)
    torch.manual_seed(args.seed)
    cfg = TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=args.expansion * x.shape[1], k=args.k,
                                normalize_activations="none", dtype="float32", device="cpu")
    sae = TopKTrainingSAE(cfg)
    tcfg = SAETrainerConfig(
        total_training_samples=args.steps * args.batch_size, train_batch_size_samples=args.batch_size, lr=args.lr,
        lr_end=args.lr, lr_scheduler_name="constant", lr_warm_up_steps=args.warmup,
        lr_decay_steps=int(0.2 * args.steps), dead_feature_window=args.dead_steps,
        feature_sampling_window=args.steps, device="cpu")
    trainer = SAETrainer(tcfg, sae, (src.batch(i) for i in itertools.count()))
    # the same input scale as uncover's (fit() folds it into the weights at the end)
    trainer.activation_scaler.scaling_factor = _input_scale(src.batch(0))
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    sae.save_inference_model(d / "saelens_sae")
    sae.eval()
    common.emit({"seconds": seconds, "cpu": cpu, "activations": trainer.n_training_samples,
                 "version": sae_lens.__version__, "fve_own": score(sae, x)[1]})


def score(sae, x) -> tuple[float, float]:
    """(MSE per token summed over d_in, fraction of variance explained) of ``sae`` on ``x [n, d_in]``."""
    import torch

    with torch.no_grad():
        err = (sae(x) - x).double().pow(2).sum(-1).mean()
        var = (x - x.mean(0)).double().pow(2).sum(-1).mean()
    return float(err), float(1 - err / var)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    if args.saelens_worker:
        saelens_worker(args)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from safetensors.torch import save_file

    import uncover
    from uncover.data.corpus import token_blocks
    from uncover.sae import SAE, SAEConfig, TensorSource, TopKSAE, TrainConfig, harvest, train_sae

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = uncover.load()
    blocks = token_blocks(model, block_len=128)[: args.blocks]
    held = token_blocks(model, block_len=128, split="heldout")[: args.heldout_blocks]

    # ---- harvesting vs the plain forward floor --------------------------------------------
    fb = blocks[: args.floor_blocks]

    def fwd() -> None:
        for i in range(0, len(fb), 8):
            model.model(input_ids=fb[i : i + 8], use_cache=False)

    def harv() -> None:
        harvest(model, HOOK, fb, batch_size=8, skip_first=0)

    p = common.time_paired(harv, fwd, repeats=3, warmup=1)
    n_tok = fb.numel()
    rows = [["plain forward passes (floor), full model", f"{n_tok / p.floor_median:,.0f} tokens/s", "", "", ""],
            [f"uncover harvest at {HOOK} (stops after the hook)", f"{n_tok / p.median:,.0f} tokens/s", "",
             f"{1 / p.ratio:.2f}× the floor", ""]]

    # ---- the activation stream, saved for the SAELens worker -------------------------------
    t0 = time.perf_counter()
    x = harvest(model, HOOK, blocks)
    t_h = time.perf_counter() - t0
    x_held = harvest(model, HOOK, held)
    work = Path(tempfile.mkdtemp(prefix="bench_sae_"))
    save_file({"acts": x.contiguous()}, work / "acts.safetensors")

    # ---- uncover ---------------------------------------------------------------------------
    cfg = SAEConfig(d_in=x.shape[1], d_sae=args.expansion * x.shape[1], architecture="topk", k=args.k,
                    hook_name=HOOK)
    tcfg = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=args.warmup, decay_fraction=0.2,
                       dead_steps=args.dead_steps, log_every=args.steps, checkpoint_every=0, seed=args.seed)
    torch.set_grad_enabled(True)
    torch.manual_seed(args.seed)
    c0 = time.process_time()
    ours = train_sae(TopKSAE(cfg, seed=args.seed), TensorSource(x, args.batch_size, args.seed), tcfg, progress=False)
    ours_cpu = time.process_time() - c0
    torch.set_grad_enabled(False)
    rate, cpu_rate = ours.tokens / ours.seconds, ours.tokens / ours_cpu
    setting = (f"TopK {cfg.d_sae} latents, k={args.k}, batch {args.batch_size}, {args.steps} steps, "
               f"lr {args.lr:g}, {args.threads} thread(s)")

    def quality(sae) -> str:
        mse_tr, fve_tr = score(sae, x)
        mse_h, fve_h = score(sae, x_held)
        return f"FVE {fve_tr:.3f} train / {fve_h:.3f} held-out (MSE {mse_tr:.2f} / {mse_h:.2f})"

    rows.append([f"uncover train_sae, {setting}", f"{rate:,.0f} activations/s", f"{cpu_rate:,.0f} activations/CPU-s",
                 "1.00× / 1.00×", quality(ours.sae)])
    fve_ours = score(ours.sae, x_held)[1]

    # ---- SAELens, same stream and hyper-parameters, in .bench-venv -------------------------
    py = BENCH_VENV / "bin" / "python"
    if not py.exists():
        rows.append(["SAELens: skipped (no .bench-venv; run benchmarks/setup_bench_env.sh)", "", "", "", ""])
        note = "SAELens not run"
    else:
        env = common.quiet_env({"PYTHONPATH": os.pathsep.join([str(SAELENS_SITE), str(common.ROOT / "benchmarks"),
                                                               str(common.ROOT / "src")])})
        wargs = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-record"]
        res = _run(py, [__file__, *wargs, "--saelens-worker", str(work)], env)
        if "error" in res:
            rows.append([f"SAELens: failed ({res['error'][:200]})", "", "", "", ""])
            note = "SAELens failed"
        else:
            theirs = SAE.load(work / "saelens_sae")
            t_rate, t_cpu = res["activations"] / res["seconds"], res["activations"] / res["cpu"]
            fve_theirs = score(theirs, x_held)[1]
            # the SAELens-format round trip: SAELens's own forward and ours on its saved weights agree
            assert abs(score(theirs, x)[1] - res["fve_own"]) < 1e-4, (score(theirs, x)[1], res["fve_own"])
            rows.append([f"SAELens {res['version']} SAETrainer.fit, same setting and batches",
                         f"{t_rate:,.0f} activations/s", f"{t_cpu:,.0f} activations/CPU-s",
                         f"{t_rate / rate:.2f}× / {t_cpu / cpu_rate:.2f}×", quality(theirs)])
            equal = abs(fve_ours - fve_theirs) <= FVE_TOLERANCE
            note = (f"uncover / SAELens training throughput: {rate / t_rate:.2f}× in wall time, "
                    f"{cpu_rate / t_cpu:.2f}× in CPU time (goal ≥ 1×); held-out FVE {fve_ours:.3f} (uncover) vs "
                    f"{fve_theirs:.3f} (SAELens): {'equal' if equal else 'NOT equal'} within {FVE_TOLERANCE}.")
    shutil.rmtree(work, ignore_errors=True)
    headers = ["configuration", "throughput (wall)", "throughput (CPU time)", "× uncover (wall / CPU)",
               "final reconstruction"]
    body = common.table(headers, rows, [False, True, True, True, False])
    print(body)
    print(note)
    if not args.no_record:
        section = f"bench_sae ({common.env_label()})"
        load = os.getloadavg()[0]
        extra = (f"{len(blocks)} train blocks x 128 tokens ({len(x)} activations of width {x.shape[1]}, harvested in "
                 f"{t_h:.1f} s), {len(x_held)} held-out activations; {args.floor_blocks} blocks for the harvest "
                 f"timing; load average {load:.1f} at the end of the run")
        common.record(section, "\n".join([f"## {section}", "", *common.header_lines(extra), "", body, "", note, ""]))


def _run(py: Path, args: list[str], env: dict[str, str], timeout: float = 1200) -> dict:
    import subprocess

    try:
        p = subprocess.run([str(py), *args], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(common.RESULT_TAG):
            return json.loads(line[len(common.RESULT_TAG) :])
    return {"error": f"exited {p.returncode}: " + " | ".join((p.stderr or p.stdout).strip().splitlines()[-6:])}


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
