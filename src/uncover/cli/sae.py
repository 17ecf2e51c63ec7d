"""``uncover sae train|eval|show``: train an SAE on the embedded corpus, evaluate it, show feature dashboards."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model
from uncover.core.errors import UncoverError

app = typer.Typer(no_args_is_help=True, help="Sparse autoencoders: train, evaluate, feature dashboards.")


@app.callback()
def _group() -> None:
    """Sparse autoencoders: train, evaluate, feature dashboards."""


@app.command("train")
def train(
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (checkpoints, metrics, the SAE in out/sae)"),
    hook: str = typer.Option("blocks.15.hook_resid_post", "--hook", help="Hook whose activations to encode"),
    arch: str = typer.Option("topk", "--arch", help="standard (ReLU+L1), topk or jumprelu"),
    expansion: int = typer.Option(4, "--expansion", help="d_sae = expansion x d_in"),
    k: int = typer.Option(32, "--k", help="Active latents per token (topk)"),
    tokens: int = typer.Option(65536, "--tokens", help="Activations to harvest from the corpus"),
    block_len: int = typer.Option(128, "--block-len", help="Tokens per corpus block"),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps"),
    batch_size: int = typer.Option(1024, "--batch-size", help="Activations per step"),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate"),
    sparsity_coeff: float = typer.Option(1.0, "--sparsity-coeff", help="L1 (standard) or L0 (jumprelu) coefficient"),
    resample_every: int = typer.Option(0, "--resample-every", help="Resample dead latents every N steps (standard)"),
    init_threshold: float = typer.Option(0.05, "--init-threshold",
                                         help="Initial threshold (jumprelu; inputs are scaled to E||x||^2 = d_in)"),
    bandwidth: float = typer.Option(0.05, "--bandwidth", help="Straight-through kernel width (jumprelu)"),
    aux_coeff: float = typer.Option(1 / 32, "--aux-coeff",
                                    help="Dead-latent loss weight: AuxK (topk), pre-activation loss (jumprelu)"),
    shards: bool = typer.Option(False, "--shards", help="Cache activations as safetensors shards in out/acts"),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Steps between checkpoints"),
    resume: bool = typer.Option(False, "--resume", help="Continue from out/checkpoint"),
    tensorboard: Path | None = typer.Option(None, "--tensorboard",
                                            help="Also write the metrics as TensorBoard events to this directory"),
    corpus: Path | None = typer.Option(None, "--corpus", help=".txt or .jsonl corpus (default: embedded)"),
    seed: int = typer.Option(0, "--seed"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Harvest activations at a hook and train an SAE on them (resumable)."""
    import torch

    from uncover.data.corpus import corpus_texts, token_blocks
    from uncover.sae import ARCHITECTURES, SAEConfig, ShardSource, TensorSource, TrainConfig, harvest, train_sae

    if arch not in ARCHITECTURES:
        raise UncoverError(f"unknown SAE architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    m = load_model(model)
    m.site(hook)
    texts = corpus_texts(corpus) if corpus is not None else None
    blocks = token_blocks(m, texts, block_len=block_len)
    n_blocks = min(len(blocks), -(-tokens // (block_len - 1)))
    blocks = blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[:n_blocks]]
    acts_dir = out / "acts"
    if shards and resume and any(acts_dir.glob("shard_*.safetensors")):
        source = ShardSource(acts_dir, batch_size, seed)
    else:
        print(f"uncover: harvesting {n_blocks * (block_len - 1)} activations at {hook} ...", file=sys.stderr)
        acts = harvest(m, hook, blocks, out_dir=acts_dir if shards else None)
        source = ShardSource(acts, batch_size, seed) if shards else TensorSource(acts, batch_size, seed)
    d_in = m.cfg.d_model if "resid" in hook or hook.endswith("_out") else int(source.batch(0).shape[-1])
    cfg = SAEConfig(d_in=d_in, d_sae=expansion * d_in, architecture=arch, hook_name=hook,
                    k=k if arch == "topk" else None, model_name=m.name or "")
    jump = {"init_threshold": init_threshold, "bandwidth": bandwidth} if arch == "jumprelu" else {}
    sae = ARCHITECTURES[arch](cfg, seed=seed, **jump)
    tcfg = TrainConfig(steps=steps, lr=lr, sparsity_coeff=sparsity_coeff, resample_every=resample_every,
                       aux_coeff=aux_coeff, checkpoint_every=checkpoint_every, seed=seed)
    result = train_sae(sae, source, tcfg, out_dir=out, resume=resume, tensorboard=tensorboard)
    print(f"uncover: SAE written to {(out / 'sae').resolve()}", file=sys.stderr)
    emit(result, as_json, html)


def _load(path: Path, model: str | None):
    from uncover.sae import SAE

    sae = SAE.load(path / "sae" if (path / "sae" / "cfg.json").is_file() else path)
    m = load_model(model)
    m.site(sae.cfg.hook_name)
    return sae, m


@app.command("eval")
def eval_(
    path: Path = typer.Argument(..., help="SAE directory (SAELens format) or a training run directory"),
    blocks: int = typer.Option(64, "--blocks", help="Held-out corpus blocks of 128 tokens"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """MSE, variance explained, L0, dead/dense latents and CE loss recovered on held-out text."""
    from uncover.data.corpus import token_blocks
    from uncover.sae import evaluate_sae

    sae, m = _load(path, model)
    result = evaluate_sae(m, sae, token_blocks(m, block_len=128, split="heldout")[:blocks])
    emit(result, as_json, html)


@app.command("show")
def show(
    path: Path = typer.Argument(..., help="SAE directory (SAELens format) or a training run directory"),
    feature: str | None = typer.Option(None, "--feature", "-f", help="Feature indices, comma-separated"),
    n_random: int = typer.Option(12, "--random", help="Without --feature: this many random live features"),
    blocks: int = typer.Option(128, "--blocks", help="Held-out corpus blocks of 64 tokens to stream"),
    seed: int = typer.Option(0, "--seed"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write the feature dashboards (HTML) here"),
) -> None:
    """Feature dashboards: top contexts with highlighting, logit effects, density."""
    from uncover.cli.neurons import _ints
    from uncover.data.corpus import token_blocks
    from uncover.sae import feature_dashboard

    sae, m = _load(path, model)
    toks = token_blocks(m, block_len=64, split="heldout")[:blocks]
    result = feature_dashboard(m, sae, _ints(feature), tokens=toks, n_random=n_random, seed=seed)
    emit(result, as_json, html)
