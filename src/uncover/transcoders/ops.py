"""Operations of transcoders: ``transcoder train`` and ``transcoder eval`` (the ``transcoder`` group).

``transcoder train`` harvests MLP inputs and outputs from a corpus and trains per-layer
transcoders or one cross-layer transcoder in a resumable run directory
(:func:`~uncover.transcoders.train.train_transcoders`; the set in ``out/transcoders``);
``transcoder eval`` scores a set on held-out text
(:func:`~uncover.transcoders.evaluate.evaluate_transcoders`). Without a path, ``eval`` (and
``graph``) use the model's quick set (:func:`~uncover.transcoders.quick.quick_transcoders`:
trained on first use, then cached) on ``--quick-layers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from uncover.core.config import SEED_MAX, Config, fields_of, param
from uncover.core.errors import UsageError
from uncover.core.rundir import begin_run, resolve_run
from uncover.neurons.ops import check_corpus
from uncover.ops.registry import operation
from uncover.transcoders.evaluate import TranscoderEval
from uncover.transcoders.train import TranscoderTraining

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel
    from uncover.transcoders.sets import TranscoderSet

#: fields that steer a run but do not define it (a resume may change them)
RUN_CONTROL = frozenset({"out", "steps", "resume", "overwrite", "checkpoint_every"})
RUN_FILES = ("transcoders", "clt", "metrics.csv", "metrics.jsonl")


@dataclass(frozen=True)
class TranscoderTrainConfig(Config):
    """Train transcoders of a model's MLPs (per layer, or one cross-layer transcoder) in a resumable run directory.

    >>> TranscoderTrainConfig(out=Path("."), layers=[2, 3], k=8).layers
    [2, 3]
    """

    out: Path = param(help="Run directory (one run per layer or clt/, the set in out/transcoders)", path="out_dir")
    layers: list[int] | None = param(None, help="Layers whose MLPs to replace (default: all)", unit="layer",
                                     min_items=1)
    cross_layer: bool = param(False, help="One cross-layer transcoder (features write to all later MLPs)")
    expansion: int = param(4, help="Features per layer = expansion x d_model", ge=1)
    activation: Literal["topk", "relu"] = param("topk", help="Feature activation (relu: with an L1 penalty)")
    k: int = param(32, help="Active features per layer and token (topk)", ge=1)
    skip: bool = param(False, help="Add a linear skip connection (SAELens skip_transcoder)")
    tokens: int = param(65536, help="Tokens to harvest from the corpus", ge=1)
    block_len: int = param(128, help="Tokens per corpus block", ge=2)
    steps: int = param(1000, help="Optimizer steps (per layer)", ge=1)
    batch_size: int = param(1024, help="Tokens per step", ge=1)
    lr: float = param(1e-3, help="Peak learning rate", gt=0)
    sparsity_coeff: float = param(1.0, help="L1 coefficient (relu)", ge=0)
    checkpoint_every: int = param(100, help="Steps between checkpoints (0: only at the end)", ge=0)
    resume: bool = param(False, help="Continue the run in --out (with its settings)")
    overwrite: bool = param(False, help="Replace a run already in --out")
    corpus: Path | None = param(None, help=".txt or .jsonl corpus (default: embedded)", path="in")
    seed: int = param(0, help="Seed of the initialisation, the corpus sample and the batches", ge=0, le=SEED_MAX)

    def validate(self) -> None:
        check_corpus(self.corpus, "TranscoderTrainConfig")
        if self.tokens < self.batch_size:
            raise UsageError(f"TranscoderTrainConfig: tokens (--tokens) {self.tokens} is less than one batch "
                             f"(--batch-size {self.batch_size}); harvest at least as many tokens as a batch")
        if self.resume and self.overwrite:
            raise UsageError("TranscoderTrainConfig: --resume continues a run and --overwrite replaces it; give one")
        has = (self.out / "transcoders").exists() or any(self.out.glob("layer_*")) or (self.out / "clt").exists()
        defaults = {f.name: f.default for f in fields_of(type(self))}
        used = resolve_run(self.out, self.run_settings(), defaults, resume=self.resume, overwrite=self.overwrite,
                           holds_run=has, owner="TranscoderTrainConfig")
        for key, v in used.items():
            object.__setattr__(self, key, v)

    def run_settings(self) -> dict[str, Any]:
        """The settings that define the run (what a resume must keep), as JSON values."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CONTROL}

    def check_model(self, model: HookedModel) -> None:
        from uncover.core.memory import check_fits

        super().check_model(model)
        d, n = model.cfg.d_model, len(self.layers) if self.layers else model.cfg.n_layers
        d_feat = self.expansion * d
        # per layer: W_enc, W_dec (all later layers for a CLT) with gradients and Adam; the MLP inputs and outputs
        writes = n if self.cross_layer else 1
        check_fits(4 * (n * 4 * d * d_feat * (1 + writes) + 3 * self.batch_size * d_feat * n + 2 * self.tokens * d * n),
                   f"TranscoderTrainConfig: {n} layer(s) of {d_feat} features (--expansion {self.expansion}), "
                   f"--batch-size {self.batch_size}, --tokens {self.tokens}",
                   "lower --expansion, --batch-size or --tokens, or train fewer --layers", model.device)
        if self.activation == "topk" and self.k > self.expansion * model.cfg.d_model:
            raise UsageError(f"TranscoderTrainConfig: k (--k) must be at most expansion x d_model = "
                             f"{self.expansion * model.cfg.d_model}, got {self.k}")


@operation("transcoder train", TranscoderTrainConfig, TranscoderTraining, long=True, rtol=1e-3, atol=1e-4,
           example={"out": "tc-run", "layers": [2], "tokens": 256, "block_len": 64, "steps": 4, "batch_size": 64,
                    "expansion": 1, "k": 8, "checkpoint_every": 2})
def transcoder_train(model: HookedModel, cfg: TranscoderTrainConfig, progress: Progress) -> TranscoderTraining:
    """Harvest MLP inputs and outputs and train transcoders on them (resumable)."""
    import torch

    from uncover.data.corpus import corpus_texts, token_blocks
    from uncover.sae.train import TrainConfig
    from uncover.transcoders.train import train_transcoders

    begin_run(cfg.out, cfg.run_settings(), [*RUN_FILES, *(p.name for p in cfg.out.glob("layer_*"))],
              resume=cfg.resume)
    texts = corpus_texts(cfg.corpus) if cfg.corpus is not None else None
    blocks = token_blocks(model, texts, block_len=cfg.block_len)
    n_blocks = min(len(blocks), -(-cfg.tokens // (cfg.block_len - 1)))
    blocks = blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(cfg.seed))[:n_blocks]]
    layers = cfg.layers if cfg.layers is not None else list(range(model.cfg.n_layers))
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, sparsity_coeff=cfg.sparsity_coeff,
                       checkpoint_every=cfg.checkpoint_every, seed=cfg.seed)
    progress.message(f"harvesting MLP inputs and outputs of {len(layers)} layer(s) ...")
    result = train_transcoders(model, layers, blocks, tcfg, cross_layer=cfg.cross_layer, expansion=cfg.expansion,
                               activation=cfg.activation, k=cfg.k, skip=cfg.skip, batch_size=cfg.batch_size,
                               out_dir=cfg.out, resume=cfg.resume, progress=progress)
    progress.message(f"transcoders written to {(cfg.out / 'transcoders').resolve()}")
    return result


QUICK_HELP = ("Without a path: the quick set's layers (default: all; trained on first use, then cached: minutes "
              "on a CPU for every layer)")


def load_transcoders(model: HookedModel, path: Path | None, quick_layers: list[int] | None, quick_steps: int,
                     progress: Progress) -> TranscoderSet:
    """The set at ``path`` (a set, CLT, transcoder or run directory), or the model's quick set."""
    from uncover.transcoders.quick import QuickTranscoderSpec, quick_transcoders
    from uncover.transcoders.sets import TranscoderSet

    if path is not None:
        return TranscoderSet.load(path)
    progress.message("no transcoders given: using the quick set (trained on first use, then cached)")
    spec = QuickTranscoderSpec(layers=tuple(quick_layers) if quick_layers else None, steps=quick_steps)
    return quick_transcoders(model, spec, progress=bool(progress))


def check_set_path(path: Path | None, owner: str) -> None:
    """``path`` holds transcoders (read without their weights' contents mattering); else a :class:`UsageError`."""
    if path is None:
        return
    from uncover.transcoders.base import TranscoderError
    from uncover.transcoders.sets import TranscoderSet

    try:
        TranscoderSet.load(path)
    except TranscoderError as e:
        raise UsageError(f"{owner}: path {e}") from None


@dataclass(frozen=True)
class TranscoderEvalConfig(Config):
    """Evaluate transcoders on held-out text: variance explained, L0, error-node size, CE with the MLPs replaced.

    >>> TranscoderEvalConfig(blocks=4).path is None
    True
    """

    path: Path | None = param(None, help="Transcoder set, CLT, transcoder or run directory (default: the quick set)",
                              positional=True, path="in_dir")
    blocks: int = param(32, help="Held-out corpus blocks of 128 tokens", ge=1)
    quick_layers: list[int] | None = param(None, help=QUICK_HELP, unit="layer", min_items=1)
    quick_steps: int = param(300, help="Training steps of the quick set", ge=1)

    def validate(self) -> None:
        check_set_path(self.path, "TranscoderEvalConfig")


@operation("transcoder eval", TranscoderEvalConfig, TranscoderEval,
           example={"blocks": 1, "quick_layers": [3], "quick_steps": 10})
def transcoder_eval(model: HookedModel, cfg: TranscoderEvalConfig, progress: Progress) -> TranscoderEval:
    """Variance explained, L0, error-node size and CE loss with the MLPs replaced, on held-out text."""
    from uncover.data.corpus import token_blocks
    from uncover.transcoders.evaluate import evaluate_transcoders
    tset = load_transcoders(model, cfg.path, cfg.quick_layers, cfg.quick_steps, progress)
    tset.check_model(model, "TranscoderEvalConfig")
    return evaluate_transcoders(model, tset, token_blocks(model, block_len=128, split="heldout")[: cfg.blocks])
