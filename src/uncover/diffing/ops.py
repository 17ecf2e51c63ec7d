"""The ``diff`` operation: what changed between the loaded (base) model and CHANGED, side by side.

CHANGED is another model (a ``.gguf``, a Hugging Face directory such as a pruned model saved by
``uncover prune --out``, or a hub id), a saved edit directory (``uncover edit --save``), a weight change
file, or a steering vector (``uncover read --save``); or, with ``--edit-subject``/``--edit-target``, the
base with an edit made on the spot (edit-then-explain). The base is restored bit-exactly afterwards.
See :func:`uncover.diffing.diff.model_diff`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from uncover.core.config import SCALE_MAX, SEED_MAX, Config, fields_of, param
from uncover.core.errors import UsageError
from uncover.diffing.analysis import CrosscoderAnalysis
from uncover.diffing.diff import ModelDiff
from uncover.ops.registry import operation

if TYPE_CHECKING:
    import torch

    from uncover.core.progress import Progress
    from uncover.diffing.changed import Change
    from uncover.hooks.hooked import HookedModel

PROBES = ["The Eiffel Tower is in the city of", "The Colosseum is in the city of",
          "The capital of France is", "Paris is the capital of", "The Louvre is in the city of"]


@dataclass(frozen=True, kw_only=True)
class ChangeSpec(Config):
    """What is compared: ``[BASE] CHANGED`` (or an edit made on the spot); shared by ``diff`` and ``crosscoder``.

    With one model it is CHANGED and the base is the loaded model (``--model``, default the embedded one);
    with two, the first is the base, which the CLI loads.

    >>> ChangeSpec(models=["edited/"]).changed, ChangeSpec(models=["base.gguf", "edited/"]).model_source()
    ('edited/', 'base.gguf')
    """

    models: list[str] = param([], help="[BASE] CHANGED: the changed model (a .gguf, HF directory or hub id, a saved "
                                       "edit directory, a weight-change file or a steering vector), after the base "
                                       "model if you name one (default: --model, else the embedded model)",
                              positional=True, nonempty=True)
    edit_subject: str | None = param(None, help="Instead of CHANGED: edit this subject's fact on the spot",
                                     nonempty=True)
    edit_target: str | None = param(None, help="The new object of the edit, with its leading space: ' Rome'")
    edit_prompt: str = param("{} is in the city of", help="The edit's prompt, with {} for the subject",
                             nonempty=True)
    edit_method: Literal["rome", "memit", "kn"] = param("rome", help="Editing method of the on-the-spot edit")
    edit_layer: int | None = param(None, help="Edited layer (default: from causal tracing)", ge=0, unit="layer")
    mom2_samples: int = param(20_000, help="Corpus tokens for ROME/MEMIT key statistics", ge=1)
    steer_scale: float = param(4.0, help="Scale of a steering vector given as CHANGED", gt=0, le=SCALE_MAX)

    @property
    def changed(self) -> str | None:
        """CHANGED, when given as a path or id (None: an edit made on the spot)."""
        if not self.models or (len(self.models) == 1 and self.edit_subject is not None):
            return None
        return self.models[-1]

    def model_source(self) -> str | None:
        """BASE, when ``models`` names two (or one together with an on-the-spot edit)."""
        if len(self.models) == 2 or (len(self.models) == 1 and self.edit_subject is not None):
            return self.models[0]
        return None

    def validate(self) -> None:
        owner = type(self).__name__
        if len(self.models) > 2:
            raise UsageError(f"{owner}: give at most two models, [BASE] CHANGED; got {len(self.models)}: "
                             f"{self.models}")
        check_changed(self)


@dataclass(frozen=True, kw_only=True)
class DiffConfig(ChangeSpec):
    """Diff BASE (the loaded model) against CHANGED: predictions, causal traces, changed features, weight delta.

    >>> DiffConfig(models=["edited/"]).edit_subject is None
    True
    >>> DiffConfig()
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: DiffConfig: give CHANGED (a model, a saved edit, a weight change or a steering \
vector) or --edit-subject and --edit-target (an edit made on the spot), not neither
    """

    probe: list[str] = param(PROBES, help="Probe prompt (repeatable)", nonempty=True, min_items=1)
    subject_prompt: str = param("The Eiffel Tower is in the city of", help="Prompt of the causal traces",
                                nonempty=True)
    subject: str = param("The Eiffel Tower", help="Subject of the trace prompt", nonempty=True)
    trace: Literal["mlp", "hidden", "attn", "none"] = param("mlp", help="Causal trace kind (none: no traces)")
    samples: int = param(3, help="Noise samples per causal trace", ge=1)
    features: Path | None = param(None, help="An SAE or crosscoder directory whose latents to compare",
                                  path="in_dir")
    crosscoder_steps: int = param(0, help="Train a crosscoder for this many steps on corpus activations of both "
                                          "models (0: none)", ge=0)
    hook: str | None = param(None, help="Crosscoder hook (default: the edited layer's hook_resid_post, else the "
                                        "middle layer's)", unit="hook")
    tokens: int = param(8192, help="Corpus tokens for the crosscoder", ge=64)
    top: int = param(8, help="Features to list", ge=1)
    seed: int = param(0, help="Seed of the traces' noise and of the crosscoder", ge=0, le=SEED_MAX)

    def validate(self) -> None:
        super().validate()
        _check_crosscoder_hook(self)
        if self.subject not in self.subject_prompt:
            raise UsageError(f"DiffConfig: subject (--subject) {self.subject!r} is not in the subject prompt "
                             f"{self.subject_prompt!r}")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        check_tokenizer(model, type(self).__name__)


def _check_crosscoder_hook(cfg: Any) -> None:
    """A crosscoder reads one vector per token, as an SAE does: refuse logits, patterns, per-head q/k/v."""
    if cfg.hook is not None:
        from uncover.sae.sites import check_sae_hook

        check_sae_hook(cfg.hook, f"{type(cfg).__name__}: hook (--hook)")


def check_tokenizer(model: HookedModel, owner: str) -> None:
    """Text probes and corpora need the model's tokenizer."""
    if model.tokenizer is None:
        raise UsageError(f"{owner}: the model has no tokenizer; text probes and corpora need one "
                         "(use uncover.diffing.model_diff or train_crosscoder with token ids)")


def check_changed(cfg: ChangeSpec) -> None:
    """CHANGED or an on-the-spot edit (subject and target), exactly one."""
    owner = type(cfg).__name__
    edit = cfg.edit_subject is not None or cfg.edit_target is not None
    if (cfg.changed is None) == (not edit):
        raise UsageError(f"{owner}: give CHANGED (a model, a saved edit, a weight change or a steering vector) "
                         "or --edit-subject and --edit-target (an edit made on the spot), not "
                         + ("both" if edit else "neither"))
    if edit and (cfg.edit_subject is None or cfg.edit_target is None or not cfg.edit_target.strip()):
        raise UsageError(f"{owner}: an on-the-spot edit needs both --edit-subject and --edit-target "
                         "(e.g. --edit-subject 'The Eiffel Tower' --edit-target ' Rome')")


@operation("diff", DiffConfig, ModelDiff, long=True, rtol=1e-3, atol=1e-4,
           example={"edit_subject": "The Eiffel Tower", "edit_target": " Rome", "edit_method": "kn",
                    "edit_layer": 28, "probe": ["The Eiffel Tower is in the city of", "The capital of France is"],
                    "trace": "none"})
def diff(model: HookedModel, cfg: DiffConfig, progress: Progress) -> ModelDiff:
    """Diff two models side by side: predictions, causal traces, changed features, weight delta."""
    from uncover.diffing.diff import model_diff

    change, hook = changed_of(model, cfg, progress)
    corpus = corpus_blocks(model, cfg.tokens, cfg.seed) if cfg.crosscoder_steps else None
    return model_diff(model, change, cfg.probe,
                      subject_prompt=None if cfg.trace == "none" else cfg.subject_prompt, subject=cfg.subject,
                      trace_kind=cfg.trace, trace_samples=cfg.samples, features=cfg.features,
                      crosscoder_steps=cfg.crosscoder_steps, hook=hook, corpus_tokens=corpus, top=cfg.top,
                      seed=cfg.seed, progress=progress)


def changed_of(model: HookedModel, cfg: ChangeSpec, progress: Progress) -> tuple[Change, str]:
    """The :class:`~uncover.diffing.changed.Change` a config names (an on-the-spot edit is made and reverted) and
    the crosscoder hook: ``cfg.hook``, else the edited layer's ``hook_resid_post``, else the middle layer's."""
    import re

    from uncover.core.names import act_name
    from uncover.diffing.changed import resolve_change

    changed: object = cfg.changed
    layer = None
    if cfg.changed is None:
        from uncover.editing import edit

        progress.message(f"editing {cfg.edit_subject!r} -> {cfg.edit_target!r} with {cfg.edit_method} ...")
        options = {"progress": bool(progress)} if cfg.edit_method != "kn" else {}
        e = edit(model, cfg.edit_prompt, cfg.edit_subject, cfg.edit_target, method=cfg.edit_method,
                 layer=cfg.edit_layer, mom2_samples=cfg.mom2_samples, **options)
        e.revert()  # applied again while the changed model is looked at
        changed, layer = e, (e.layers[0] if e.layers else None)
    change = resolve_change(model, changed, cfg.steer_scale)
    if layer is None and change.tensors:
        found = [int(m.group(1)) for k in change.tensors if (m := re.search(r"layers?\.(\d+)\.", k))]
        layer = min(found) if found else None
    return change, cfg.hook or act_name("resid_post", layer if layer is not None else model.cfg.n_layers // 2)


def corpus_blocks(model: HookedModel, tokens: int, seed: int, block_len: int = 64) -> torch.Tensor:
    """About ``tokens`` tokens of the embedded corpus as blocks ``[n, block_len]`` (a seeded sample)."""
    import torch

    from uncover.data.corpus import token_blocks

    blocks = token_blocks(model, block_len=block_len)
    n = min(len(blocks), -(-tokens // (block_len - 1)))
    return blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[:n]]


@dataclass(frozen=True, kw_only=True)
class CrosscoderConfig(ChangeSpec):
    """Train a crosscoder on BASE (the loaded model) and CHANGED at one hook, in a resumable run directory.

    >>> CrosscoderConfig(out=Path("cc"), models=["edited/"]).steps
    300
    """

    out: Path = param(help="Run directory (checkpoints, metrics, the crosscoder in out/sae)", path="out_dir")
    hook: str | None = param(None, help="Hook (default: the edited layer's hook_resid_post, else the middle "
                                        "layer's)", unit="hook")
    expansion: int = param(2, help="d_sae = expansion x d_model", ge=1)
    tokens: int = param(8192, help="Corpus tokens to harvest from both models", ge=64)
    steps: int = param(300, help="Optimizer steps", ge=1)
    batch_size: int = param(256, help="Activation pairs per step", ge=1)
    lr: float = param(3e-3, help="Peak learning rate", gt=0)
    sparsity_coeff: float = param(0.3, help="Lindsey et al.'s lambda (decoder-norm-weighted L1)", ge=0)
    checkpoint_every: int = param(100, help="Steps between checkpoints (0: only at the end)", ge=0)
    resume: bool = param(False, help="Continue from out/checkpoint (with the run's settings)")
    overwrite: bool = param(False, help="Replace a run already in --out")
    top: int = param(10, help="Latents to list", ge=1)
    seed: int = param(0, help="Seed of the corpus sample, the initialisation and the batches", ge=0, le=SEED_MAX)

    def validate(self) -> None:
        from uncover.core.rundir import resolve_run

        super().validate()
        _check_crosscoder_hook(self)
        ckpt = self.out / "checkpoint"
        has_ckpt = any((d / "trainer_state.json").is_file() for d in (ckpt, ckpt.with_name("checkpoint.old")))
        if self.resume and not has_ckpt:
            raise UsageError(f"CrosscoderConfig: resume (--resume): {self.out} holds no checkpoint; run without "
                             "--resume first")
        if self.resume and self.overwrite:
            raise UsageError("CrosscoderConfig: --resume continues a run and --overwrite replaces it; give one")
        defaults = {f.name: f.default for f in fields_of(type(self))}
        used = resolve_run(self.out, self.run_settings(), defaults, resume=self.resume, overwrite=self.overwrite,
                           holds_run=has_ckpt or (self.out / "sae").exists(), owner="CrosscoderConfig")
        for k, v in used.items():
            object.__setattr__(self, k, v)

    def run_settings(self) -> dict[str, Any]:
        """The settings that define the run (what a resume must keep), as JSON values."""
        d = self.to_dict()
        return {k: v for k, v in d.items() if k not in ("out", "steps", "resume", "overwrite", "checkpoint_every",
                                                        "top")}

    def check_model(self, model: HookedModel) -> None:
        from uncover.core.memory import check_fits

        super().check_model(model)
        check_tokenizer(model, type(self).__name__)
        d = model.cfg.d_model
        d_sae = self.expansion * d
        # encoder and decoder of both models with gradients and Adam, a batch's latents, both harvests
        check_fits(4 * (16 * d * d_sae + 3 * self.batch_size * d_sae + 2 * self.tokens * d),
                   f"CrosscoderConfig: d_sae {d_sae} (--expansion {self.expansion} x d_model {d}), "
                   f"--batch-size {self.batch_size}, --tokens {self.tokens}",
                   "lower --expansion, --batch-size or --tokens", model.device)


CC_FILES = ("checkpoint", "checkpoint.old", "checkpoint.tmp", "sae", "metrics.csv", "metrics.jsonl")


@operation("crosscoder", CrosscoderConfig, CrosscoderAnalysis, long=True, rtol=1e-3, atol=1e-4,
           example={"out": "cc-run", "edit_subject": "The Eiffel Tower", "edit_target": " Rome",
                    "edit_method": "kn", "edit_layer": 28, "tokens": 512, "steps": 6, "batch_size": 128,
                    "expansion": 1, "checkpoint_every": 3})
def crosscoder(model: HookedModel, cfg: CrosscoderConfig, progress: Progress) -> CrosscoderAnalysis:
    """Train a crosscoder on two models (resumable) and classify its latents: shared, base-only, changed-only."""
    from uncover.core.rundir import begin_run
    from uncover.diffing.analysis import analyse_crosscoder, block_context, train_crosscoder
    from uncover.sae.train import TrainConfig

    begin_run(cfg.out, cfg.run_settings(), CC_FILES, resume=cfg.resume)
    change, hook = changed_of(model, cfg, progress)
    blocks = corpus_blocks(model, cfg.tokens, cfg.seed)
    progress.message(f"harvesting {blocks.numel()} tokens at {hook} from both models, then training ...")
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, sparsity_coeff=cfg.sparsity_coeff, warmup_steps=20,
                       sparsity_warmup_steps=max(1, cfg.steps // 4), checkpoint_every=cfg.checkpoint_every,
                       seed=cfg.seed)
    r, xa, xb = train_crosscoder(model, change, hook, blocks, cfg.expansion * model.cfg.d_model, tcfg,
                                 batch_size=cfg.batch_size, out_dir=cfg.out, resume=cfg.resume, seed=cfg.seed,
                                 progress=bool(progress))
    progress.message(f"crosscoder written to {(cfg.out / 'sae').resolve()}")
    return analyse_crosscoder(r.sae, xa, xb, block_context(blocks, model), top=cfg.top)  # type: ignore[arg-type]
