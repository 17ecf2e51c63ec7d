"""Operations of sparse autoencoders: ``sae train``, ``sae eval``, ``sae show`` and ``sae steer`` (the ``sae`` group).

``sae train`` harvests activations at a hook from a corpus and trains an SAE in a resumable
run directory (:func:`~uncover.sae.train.train_sae`: checkpoints, metrics, the SAE in
``out/sae``); ``sae eval`` scores an SAE on held-out text
(:func:`~uncover.sae.evaluate.evaluate_sae`); ``sae show`` builds feature dashboards
(:func:`~uncover.sae.dashboard.feature_dashboard`); ``sae steer`` steers, clamps or ablates one latent and
shows the output before and after (:func:`~uncover.sae.steer_latent.steer_latent`). ``eval``, ``show`` and
``steer`` read a run directory
or an SAE directory in SAELens format (:func:`~uncover.sae.sites.sae_dir`); without one they use
the model's quick SAE (:func:`~uncover.sae.quick.quick_sae`, the tour's features: trained on
first use, then cached), so that they run right away.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from uncover.core.config import SCALE_MAX, SEED_MAX, Config, fields_of, param
from uncover.core.errors import UsageError
from uncover.core.rundir import begin_run, resolve_run
from uncover.heads.ops import max_positions
from uncover.neurons.ops import check_corpus
from uncover.ops.registry import operation
from uncover.sae.dashboard import FeatureDashboard
from uncover.sae.evaluate import SAEEval
from uncover.sae.sites import check_sae_hook, sae_dir, sae_input_width
from uncover.sae.steer_latent import LatentSteerResult
from uncover.sae.train import TrainResult

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel
    from uncover.sae.base import SAE, SAEConfig


@dataclass(frozen=True)
class SAETrainConfig(Config):
    """Train an SAE on activations at one hook, in a resumable run directory.

    >>> SAETrainConfig(out=Path("."), hook="blocks.15.attn.hook_pattern")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: SAETrainConfig: hook (--hook) blocks.15.attn.hook_pattern cannot feed an SAE: \
attention patterns hold one value per (query, key) pair, not one vector per token; use a residual hook \
(blocks.15.hook_resid_post), blocks.15.hook_attn_out, blocks.15.hook_mlp_out, blocks.15.mlp.hook_post or \
blocks.15.attn.hook_z
    """

    out: Path = param(help="Run directory (checkpoints, metrics, the SAE in out/sae)", path="out_dir")
    hook: str = param("blocks.15.hook_resid_post", help="Hook whose activations to encode", nonempty=True,
                      unit="hook")
    arch: Literal["standard", "topk", "jumprelu"] = param("topk", help="SAE architecture (standard: ReLU + L1)")
    expansion: int = param(4, help="d_sae = expansion x d_in", ge=1)
    k: int = param(32, help="Active latents per token (topk)", ge=1)
    tokens: int = param(65536, help="Activations to harvest from the corpus", ge=1)
    block_len: int = param(128, help="Tokens per corpus block", ge=2)
    steps: int = param(1000, help="Optimizer steps", ge=1)
    batch_size: int = param(1024, help="Activations per step", ge=1)
    lr: float = param(1e-3, help="Peak learning rate", gt=0)
    sparsity_coeff: float = param(1.0, help="L1 (standard) or L0 (jumprelu) coefficient", ge=0)
    resample_every: int = param(0, help="Resample dead latents every N steps (standard)", ge=0)
    init_threshold: float = param(0.05, help="Initial threshold (jumprelu; inputs are scaled to E||x||^2 = d_in)",
                                  gt=0)
    bandwidth: float = param(0.05, help="Straight-through kernel width (jumprelu)", gt=0)
    aux_coeff: float = param(1 / 32, help="Dead-latent loss weight: AuxK (topk), pre-activation loss (jumprelu)",
                             ge=0)
    shards: bool = param(False, help="Cache activations as safetensors shards in out/acts")
    checkpoint_every: int = param(100, help="Steps between checkpoints (0: only at the end)", ge=0)
    resume: bool = param(False, help="Continue from out/checkpoint (with the run's settings)")
    overwrite: bool = param(False, help="Replace a run already in --out")
    tensorboard: Path | None = param(None, help="Also write the metrics as TensorBoard events to this directory",
                                     path="out_dir")
    corpus: Path | None = param(None, help=".txt or .jsonl corpus (default: embedded)", path="in")
    harvest: Path | None = param(None, help="Train on the shards of an `uncover harvest` directory (streamed, "
                                 "one shard in memory) instead of harvesting --tokens from the corpus",
                                 path="in_dir")
    seed: int = param(0, help="Seed of the initialisation, the corpus sample and the batches", ge=0, le=SEED_MAX)

    def validate(self) -> None:
        check_sae_hook(self.hook, "SAETrainConfig: hook (--hook)")
        if self.harvest is not None and (self.corpus is not None or self.shards):
            raise UsageError("SAETrainConfig: --harvest trains on a harvest's shards; --corpus and --shards "
                             "harvest activations now: give one")
        check_corpus(self.corpus, "SAETrainConfig")
        if self.tokens < self.batch_size:
            raise UsageError(f"SAETrainConfig: tokens (--tokens) {self.tokens} is less than one batch "
                             f"(--batch-size {self.batch_size}); harvest at least as many activations as a batch")
        ckpt = self.out / "checkpoint"
        has_ckpt = any((d / "trainer_state.json").is_file() for d in (ckpt, ckpt.with_name("checkpoint.old")))
        if self.resume and not has_ckpt:
            raise UsageError(f"SAETrainConfig: resume (--resume): {self.out} holds no checkpoint to resume "
                             "from; run without --resume first")
        if self.resume and self.overwrite:
            raise UsageError("SAETrainConfig: --resume continues a run and --overwrite replaces it; give one")
        defaults = {f.name: f.default for f in fields_of(type(self))}
        used = resolve_run(self.out, self.run_settings(), defaults, resume=self.resume, overwrite=self.overwrite,
                           holds_run=has_ckpt or (self.out / "sae").exists(), owner="SAETrainConfig")
        for k, v in used.items():
            object.__setattr__(self, k, v)

    def run_settings(self) -> dict[str, Any]:
        """The settings that define the run (what a resume must keep), as JSON values."""
        d = self.to_dict()
        return {k: v for k, v in d.items() if k not in RUN_CONTROL}

    def check_model(self, model: HookedModel) -> None:
        from uncover.core.memory import check_fits

        super().check_model(model)
        d_in = sae_input_width(model, self.hook)
        d_sae = self.expansion * d_in
        # W_enc, W_dec with their gradients and two Adam moments, a batch's latents, the harvest held in memory
        held = 0 if self.shards or self.harvest is not None else self.tokens * d_in
        check_fits(4 * (8 * d_in * d_sae + 3 * self.batch_size * d_sae + held),
                   f"SAETrainConfig: d_sae {d_sae} (--expansion {self.expansion} x d_in {d_in}), "
                   f"--batch-size {self.batch_size}, --tokens {self.tokens}",
                   "lower --expansion, --batch-size or --tokens (or keep the activations on disk with --shards)",
                   model.device)
        if self.arch == "topk" and self.k > d_sae:
            raise UsageError(f"SAETrainConfig: k (--k) must be at most d_sae = expansion x d_in = {d_sae}, "
                             f"got {self.k}")
        longest = max_positions(model)
        if longest and self.block_len > longest:
            raise UsageError(f"SAETrainConfig: block_len (--block-len) must be at most {longest} (the model's "
                             f"context), got {self.block_len}")


@operation("sae train", SAETrainConfig, TrainResult, long=True, rtol=1e-3, atol=1e-4,
           example={"out": "sae-run", "hook": "blocks.2.hook_resid_post", "tokens": 512, "block_len": 64,
                    "steps": 6, "batch_size": 128, "expansion": 1, "k": 8, "checkpoint_every": 3})
def sae_train(model: HookedModel, cfg: SAETrainConfig, progress: Progress) -> TrainResult:
    """Harvest activations at a hook and train an SAE on them (resumable)."""
    import torch

    from uncover.data.corpus import corpus_texts, token_blocks
    from uncover.sae import ARCHITECTURES, SAEConfig, ShardSource, TensorSource, TrainConfig, harvest, train_sae

    # an overwritten run's files go before anything new is written; an older run gets its record
    begin_run(cfg.out, cfg.run_settings(), RUN_FILES, resume=cfg.resume)
    acts_dir = cfg.out / "acts"
    if cfg.harvest is not None:  # an `uncover harvest` directory: streamed shard by shard
        from uncover.scale.reader import ShardSource as HarvestSource

        source = HarvestSource(cfg.harvest, cfg.hook, cfg.batch_size, cfg.seed)
        progress.message(f"training on {source.reader.n_rows()} activations at {cfg.hook} from {cfg.harvest}")
    elif cfg.shards and cfg.resume and any(acts_dir.glob("shard_*.safetensors")):
        source = ShardSource(acts_dir, cfg.batch_size, cfg.seed)
    else:
        texts = corpus_texts(cfg.corpus) if cfg.corpus is not None else None
        blocks = token_blocks(model, texts, block_len=cfg.block_len)
        n_blocks = min(len(blocks), -(-cfg.tokens // (cfg.block_len - 1)))
        blocks = blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(cfg.seed))[:n_blocks]]
        progress.message(f"harvesting {n_blocks * (cfg.block_len - 1)} activations at {cfg.hook} ...")
        acts = harvest(model, cfg.hook, blocks, out_dir=acts_dir if cfg.shards else None)
        source = ShardSource(acts, cfg.batch_size, cfg.seed) if cfg.shards else TensorSource(acts, cfg.batch_size,
                                                                                               cfg.seed)
    d_in = int(source.batch(0).shape[-1])
    sae_cfg = SAEConfig(d_in=d_in, d_sae=cfg.expansion * d_in, architecture=cfg.arch, hook_name=cfg.hook,
                        k=cfg.k if cfg.arch == "topk" else None, model_name=model.name or "",
                        reshape_activations="hook_z" if cfg.hook.endswith(".attn.hook_z") else "none")
    jump = {"init_threshold": cfg.init_threshold, "bandwidth": cfg.bandwidth} if cfg.arch == "jumprelu" else {}
    sae = ARCHITECTURES[cfg.arch](sae_cfg, seed=cfg.seed, **jump)
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, sparsity_coeff=cfg.sparsity_coeff,
                       resample_every=cfg.resample_every, aux_coeff=cfg.aux_coeff,
                       checkpoint_every=cfg.checkpoint_every, seed=cfg.seed)
    result = train_sae(sae, source, tcfg, out_dir=cfg.out, resume=cfg.resume, progress=bool(progress),
                       tensorboard=cfg.tensorboard)
    progress.message(f"SAE written to {(cfg.out / 'sae').resolve()}")
    return result


def _saved_config(path: Path) -> SAEConfig:
    """The :class:`SAEConfig` of the SAE at ``path`` (run or SAE directory), without loading its weights."""
    from uncover.core.userfiles import fields_from, read_json
    from uncover.sae.base import CFG_FILE, SAEConfig

    cfg = sae_dir(path) / CFG_FILE
    with fields_from(f"SAE config {cfg}"):
        return SAEConfig.from_saelens(read_json(cfg, "SAE config", obj=True))


def _check_sae_fits(owner: str, path: Path | None, model: HookedModel) -> int:
    """The SAE's hook exists in ``model`` and has the SAE's input width; returns the SAE's ``d_sae``.

    ``path`` ``None`` is the quick SAE, which is made for the model (its ``d_sae`` follows from the model).
    """
    from uncover.core.errors import UncoverError
    from uncover.sae.quick import QuickSAESpec

    if path is None:
        return QuickSAESpec().expansion * model.cfg.d_model
    sc = _saved_config(path)
    try:
        model.site(sc.hook_name)
    except UncoverError as e:
        raise UsageError(f"{owner}: the SAE at {path} reads {sc.hook_name}, which this model lacks ({e})") from None
    try:
        width = sae_input_width(model, sc.hook_name)
    except UsageError:
        return sc.d_sae
    if width != sc.d_in:
        raise UsageError(f"{owner}: the SAE at {path} reads {sc.d_in}-wide activations at {sc.hook_name}, but this "
                         f"model's are {width} wide: it was trained on another model")
    return sc.d_sae


def _load(model: HookedModel, path: Path | None, progress: Progress) -> SAE:
    """The SAE at ``path``, or the model's quick SAE (trained on first use, then cached) for ``None``."""
    from uncover.sae.quick import quick_sae
    from uncover.sae.sites import load_sae_dir

    if path is not None:
        return load_sae_dir(path)
    progress.message("no SAE path given: using the quick SAE (the tour's features; trained on first use, then cached)")
    return quick_sae(model, progress=bool(progress))


#: fields that steer a run but do not define it (a resume may change them)
RUN_CONTROL = frozenset({"out", "steps", "resume", "overwrite", "tensorboard", "checkpoint_every"})
#: a run's files, cleared when a new run overwrites it
RUN_FILES = ("checkpoint", "checkpoint.old", "checkpoint.tmp", "sae", "metrics.csv", "metrics.jsonl", "acts")

_PATH_HELP = ("SAE directory (SAELens format) or a training run directory (default: the model's quick SAE, "
              "trained on first use in about a CPU-minute and cached)")


@dataclass(frozen=True)
class SAEEvalConfig(Config):
    """Evaluate an SAE on held-out text: a run or SAE directory, or (no path) the model's quick SAE.

    >>> SAEEvalConfig(blocks=16).path is None
    True
    """

    path: Path | None = param(None, help=_PATH_HELP, positional=True, path="in_dir")
    blocks: int = param(64, help="Held-out corpus blocks of 128 tokens", ge=1)

    def validate(self) -> None:
        if self.path is not None:
            sae_dir(self.path, f"{type(self).__name__}: path")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        _check_sae_fits("SAEEvalConfig", self.path, model)


@operation("sae eval", SAEEvalConfig, SAEEval, example={"blocks": 1})
def sae_eval(model: HookedModel, cfg: SAEEvalConfig, progress: Progress) -> SAEEval:
    """MSE, variance explained, L0, dead/dense latents and CE loss recovered on held-out text."""
    from uncover.data.corpus import token_blocks
    from uncover.sae import evaluate_sae

    sae = _load(model, cfg.path, progress)
    return evaluate_sae(model, sae, token_blocks(model, block_len=128, split="heldout")[: cfg.blocks])


@dataclass(frozen=True)
class SAEShowConfig(Config):
    """Feature dashboards of an SAE: chosen features, or random live ones.

    >>> SAEShowConfig(feature=[10, 20]).feature
    [10, 20]
    """

    path: Path | None = param(None, help=_PATH_HELP, positional=True, path="in_dir")
    feature: list[int] | None = param(None, help="Feature indices, comma-separated", ge=0, min_items=1)
    n_random: int = param(12, help="Without --feature: this many random live features", flag="--random", ge=1)
    blocks: int = param(128, help="Held-out corpus blocks of 64 tokens to stream", ge=1)
    seed: int = param(0, help="Seed of the random choice of features", ge=0, le=SEED_MAX)

    def validate(self) -> None:
        if self.path is not None:
            sae_dir(self.path, f"{type(self).__name__}: path")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        d_sae = _check_sae_fits("SAEShowConfig", self.path, model)
        bad = [f for f in self.feature or [] if f >= d_sae]
        if bad:
            raise UsageError(f"SAEShowConfig: feature (--feature) {bad[0]} is out of range; this SAE has features "
                             f"0..{d_sae - 1}")


@operation("sae show", SAEShowConfig, FeatureDashboard, example={"feature": [0, 1], "blocks": 2})
def sae_show(model: HookedModel, cfg: SAEShowConfig, progress: Progress) -> FeatureDashboard:
    """Feature dashboards: top contexts with highlighting, logit effects, density."""
    from uncover.data.corpus import token_blocks
    from uncover.sae import feature_dashboard

    sae = _load(model, cfg.path, progress)
    toks = token_blocks(model, block_len=64, split="heldout")[: cfg.blocks]
    return feature_dashboard(model, sae, cfg.feature, tokens=toks, n_random=cfg.n_random, seed=cfg.seed)


@dataclass(frozen=True)
class SAESteerConfig(Config):
    """Steer, clamp or ablate one SAE latent on a prompt: next tokens and a generation before and after.

    >>> SAESteerConfig(prompt="I think that", latent=3, scale=float("nan"))
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: SAESteerConfig: scale (--scale) must be a finite number, got nan
    """

    prompt: str = param(help="Prompt to run with and without the edit", positional=True, nonempty=True,
                        unit="tokens")
    latent: int = param(help="The SAE latent to edit", ge=0)
    mode: Literal["ablate", "steer", "clamp"] = param(
        "steer", help="steer: add --scale to the latent; clamp: hold it at --scale; ablate: set it to 0 (at every "
        "position)")
    scale: float = param(10.0, help="Amount added (steer) or value held (clamp); unused by ablate",
                         ge=-SCALE_MAX, le=SCALE_MAX)
    path: Path | None = param(None, help=_PATH_HELP, flag="--sae", path="in_dir")
    max_new_tokens: int = param(12, help="Tokens to generate with and without the edit (0: none)", ge=0, le=256)
    k: int = param(8, help="Top next tokens shown from each distribution", ge=1, le=100)

    def validate(self) -> None:
        if self.path is not None:
            sae_dir(self.path, f"{type(self).__name__}: path")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        d_sae = _check_sae_fits("SAESteerConfig", self.path, model)
        if self.latent >= d_sae:
            raise UsageError(f"SAESteerConfig: latent (--latent) {self.latent} is out of range; this SAE has latents "
                             f"0..{d_sae - 1}")


@operation("sae steer", SAESteerConfig, LatentSteerResult, rtol=1e-3, atol=1e-5,
           example={"prompt": "The Eiffel Tower is in the city of", "latent": 0, "scale": 20.0, "max_new_tokens": 4})
def sae_steer(model: HookedModel, cfg: SAESteerConfig, progress: Progress) -> LatentSteerResult:
    """Next-token distribution and greedy generation with one SAE latent steered, clamped or ablated."""
    from uncover.sae.steer_latent import steer_latent

    sae = _load(model, cfg.path, progress)
    return steer_latent(model, sae, cfg.prompt, cfg.latent, cfg.mode, cfg.scale, cfg.max_new_tokens, cfg.k)
