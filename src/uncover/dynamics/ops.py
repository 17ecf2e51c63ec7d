"""Operations of training dynamics: ``grok`` (train or resume a grokking run, or compare runs),
``memorization scan`` (extractable spans of a text under a pretrained model) and
``memorization train`` (a tiny model trained with canaries and duplicates).

``grok`` and ``memorization train`` train their own small models from scratch: they take no
model (``needs_model=False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from uncover.core.config import SCALE_MAX, SEED_MAX, Config, fields_of, param
from uncover.core.errors import UncoverError, UsageError
from uncover.core.threads import torch_threads
from uncover.dynamics.grokking.config import GrokConfig
from uncover.dynamics.grokking.report import GrokReport
from uncover.dynamics.memorization.config import MemConfig
from uncover.dynamics.memorization.report import MemorizationTraining
from uncover.dynamics.memorization.scan import TEXTS, ExtractionScanResult
from uncover.ops.registry import operation

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel

COMPARISONS = ("wd", "fractions")
"""``grok --compare``: with vs without weight decay, or the training-fraction sweep 0.2, 0.3, 0.5, 0.7."""
_RUN_FIELDS = ("p", "op", "train_frac", "weight_decay", "lr", "seed", "init_scale", "eval_every")
"""Fields of :class:`GrokOpConfig` that a run directory fixes (``--resume`` keeps the stored values)."""
_GROK_DEFAULTS = GrokConfig()


# ---- grok ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GrokOpConfig(Config):
    """Train (or resume) a grokking run on modular arithmetic, or compare runs.

    >>> GrokOpConfig(op="^")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: GrokOpConfig: unknown op (--op) '^'; valid: +, -, *, /
    """

    p: int = param(113, help="Prime modulus", ge=5)
    op: Literal["+", "-", "*", "/"] = param("+", help="Operation: a op b mod p (/ multiplies by the inverse of b)")
    steps: int | None = param(None, help="Total full-batch steps (default 25000; on --resume: the stored value)",
                              ge=1)
    train_frac: float = param(0.3, help="Fraction of pairs used for training", gt=0, lt=1)
    weight_decay: float = param(1.0, help="AdamW weight decay (0: memorize only)", ge=0)
    lr: float = param(1e-3, help="AdamW learning rate", gt=0)
    seed: int = param(0, help="Seed of the split and the initialisation", ge=0, le=SEED_MAX)
    init_scale: float = param(4.0, help="Multiplier on GPT-2's initial weights (4 ≈ Nanda et al.: memorize at "
                                        "once, generalise later; 1: no delay)", gt=0, le=SCALE_MAX)
    eval_every: int = param(100, help="Steps between metric rows", ge=1)
    out: Path | None = param(None, help="Run directory (checkpoints, snapshots, metrics)", path="out_dir")
    resume: Path | None = param(None, help="Continue the run in this directory (only --steps may change)",
                                path="in_dir")
    compare: Literal["wd", "fractions"] | None = param(
        None, help="Instead of one run: 'wd' (with vs without weight decay) or 'fractions' (training-fraction "
                   "sweep 0.2, 0.3, 0.5, 0.7)")
    threads: int | None = param(None, help="CPU threads for torch (1 on a shared machine)", ge=1)

    def validate(self) -> None:
        if self.resume is None:
            self.grok_config()
            return
        if self.out is not None and Path(self.out) != Path(self.resume):
            raise UsageError("GrokOpConfig: give either --out (new run) or --resume (existing run), not both")
        if self.compare is not None:
            raise UsageError("GrokOpConfig: --compare trains new runs; give it without --resume")
        stored = self.stored_config()
        changed = [f for f in _RUN_FIELDS if getattr(self, f) != getattr(_GROK_DEFAULTS, f)
                   and getattr(self, f) != getattr(stored, f)]
        if changed:
            what = ", ".join(f"{f} ({_option(f)} {getattr(self, f)}; the run has {getattr(stored, f)})"
                             for f in changed)
            raise UsageError(f"GrokOpConfig: cannot resume {self.resume} with a different {what}: only --steps may "
                             "change; start a new run with --out")

    def grok_config(self) -> GrokConfig:
        """The :class:`GrokConfig` of a new run with these settings.

        >>> GrokOpConfig(p=7, steps=10).grok_config().steps
        10
        """
        values = {f: getattr(self, f) for f in _RUN_FIELDS}
        if self.steps is not None:
            values["steps"] = self.steps
        try:
            return GrokConfig(**values)
        except UncoverError as e:
            raise UsageError(f"GrokOpConfig: {e}") from None

    def stored_config(self) -> GrokConfig:
        """The config stored in the ``--resume`` directory, with ``--steps`` applied."""
        try:
            cfg = GrokConfig.load(self.resume)  # type: ignore[arg-type]
            return cfg if self.steps is None else cfg.replace(steps=self.steps)
        except UncoverError as e:
            raise UsageError(f"GrokOpConfig: resume (--resume): {e}") from None

    def ignored_on_resume(self) -> list[str]:
        """``name=stored`` of the settings whose stored value differs from the one given (the default)."""
        if self.resume is None:
            return []
        stored = self.stored_config()
        return [f"{f}={getattr(stored, f)}" for f in _RUN_FIELDS if getattr(self, f) != getattr(stored, f)]


def _option(name: str) -> str:
    return next(f.option for f in fields_of(GrokOpConfig) if f.name == name)


@operation("grok", GrokOpConfig, GrokReport, needs_model=False, long=True, rtol=1e-3, atol=1e-5,
           example={"p": 7, "steps": 10, "eval_every": 5, "threads": 1})
def grok(model: Any, cfg: GrokOpConfig, progress: Progress) -> GrokReport:
    """Grokking on modular arithmetic (Nanda et al. 2023): curves, key frequencies, phases.

    >>> r = uncover.run("grok", p=7, steps=10, eval_every=5)
    >>> r.run.key_freqs  # p = 7 has 3 frequencies
    [1, 2, 3]
    """
    from uncover.dynamics.grokking import fraction_sweep, progress_measures, train, weight_decay_comparison

    if cfg.resume is not None:
        ignored = cfg.ignored_on_resume()
        if ignored:
            progress.message(f"resuming {cfg.resume} with its stored {', '.join(ignored)} (only --steps may change)")
        run = train(cfg.stored_config(), cfg.resume, resume=True, threads=cfg.threads, progress=bool(progress))
    else:
        gc = cfg.grok_config()
        if cfg.compare is not None:
            sweep = {"wd": weight_decay_comparison, "fractions": fraction_sweep}[cfg.compare]
            return GrokReport(comparison=sweep(gc, out=cfg.out, threads=cfg.threads, progress=bool(progress)))
        run = train(gc, cfg.out, threads=cfg.threads, progress=bool(progress))
    progress.message("computing progress measures ...")
    return GrokReport(run=progress_measures(run, max_snapshots=120))


# ---- memorization -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemScanConfig(Config):
    """Extractable-memorization scan of a text.

    >>> MemScanConfig(text="lorem", k=16).suffix
    16
    """

    text: str = param("mit", help=f"Built-in text ({', '.join(TEXTS)}) or a .txt file", nonempty=True)
    k: int = param(32, help="Prefix tokens", ge=1)
    suffix: int = param(16, help="Tokens that must be reproduced exactly", ge=1)
    stride: int = param(8, help="Tokens between window starts", ge=1)

    def validate(self) -> None:
        self.body()

    def body(self) -> str:
        """The text to scan: a built-in one by name, or the UTF-8 contents of a file.

        >>> MemScanConfig(text="zen").body()[:17]
        'The Zen of Python'
        """
        from uncover.dynamics.memorization.scan import builtin_text

        if self.text in TEXTS:
            return builtin_text(self.text)
        path = Path(self.text)
        if not path.is_file():
            raise UsageError(f"MemScanConfig: text (--text) {self.text!r} is neither a built-in text "
                             f"({', '.join(TEXTS)}) nor a file")
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"MemScanConfig: text (--text) {self.text}: not a readable UTF-8 text file ({e})") \
                from None

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        if model.tokenizer is None:
            raise UsageError(f"MemScanConfig: {model.name} has no tokenizer; the scan tokenises text")


@operation("memorization scan", MemScanConfig, ExtractionScanResult,
           example={"text": "lorem", "k": 16, "suffix": 4, "stride": 32})
def memorization_scan(model: HookedModel, cfg: MemScanConfig, progress: Progress) -> ExtractionScanResult:
    """Which spans of a text does the model reproduce verbatim from the k tokens before them?

    >>> r = uncover.run("memorization scan", model, text="lorem", k=16, suffix=8)
    >>> r.extractable_fraction
    0.0
    """
    from uncover.dynamics.memorization.scan import extraction_scan

    return extraction_scan(model, cfg.body(), k=cfg.k, suffix=cfg.suffix, stride=cfg.stride, name=cfg.text)


def int_list(text: str) -> list[int]:
    """``"1,4 16"`` -> ``[1, 4, 16]``; anything else is a usage error.

    >>> int_list("1,4,16,64")
    [1, 4, 16, 64]
    """
    try:
        return [int(c) for c in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"--dup-counts must be comma-separated integers, not {text!r}") from None


@dataclass(frozen=True)
class MemTrainConfig(Config):
    """Train a tiny byte-level GPT-2 with canaries and duplicated texts.

    >>> MemTrainConfig(dup_counts=[1, 8]).mem_config().dup_counts
    (1, 8)
    """

    steps: int = param(800, help="Training steps", ge=1)
    dup_counts: list[int] = param([1, 4, 16, 64], help="Copies of each injected sequence, comma list", ge=1,
                                  min_items=1, parse=int_list)
    per_count: int = param(8, help="Canaries and duplicated texts per copy count", ge=1)
    k_prefix: int = param(32, help="Prefix length of k-extractable memorization", flag="--k", ge=1)
    seed: int = param(0, help="Seed of data and initialisation", ge=0, le=SEED_MAX)
    localize: bool = param(False, help="Also attribute and ablate (a second report)")
    threads: int | None = param(None, help="CPU threads for torch (1 on a shared machine)", ge=1)

    def validate(self) -> None:
        self.mem_config()

    def mem_config(self) -> MemConfig:
        """The :class:`MemConfig` of the run.

        >>> MemTrainConfig(steps=5).mem_config().dup_counts
        (1, 4, 16, 64)
        """
        try:
            return MemConfig(steps=self.steps, dup_counts=tuple(self.dup_counts), per_count=self.per_count,
                             k_prefix=self.k_prefix, seed=self.seed)
        except UncoverError as e:
            raise UsageError(f"MemTrainConfig: {e}") from None


@operation("memorization train", MemTrainConfig, MemorizationTraining, needs_model=False, long=True,
           rtol=1e-3, atol=1e-5, example={"steps": 2, "dup_counts": [1, 2], "per_count": 1, "threads": 1})
def memorization_train(model: Any, cfg: MemTrainConfig, progress: Progress) -> MemorizationTraining:
    """Train a tiny byte-level GPT-2 with canaries/duplicates; memorization vs copies, membership AUROC.

    >>> r = uncover.run("memorization train", steps=2, dup_counts=[1, 2], per_count=1)
    >>> bool(r.memorization.membership.auroc.between(0, 1).all())
    True
    """
    from uncover.dynamics.memorization import localize_run, memorization_report, train_memorization

    run = train_memorization(cfg.mem_config(), threads=cfg.threads, progress=bool(progress))
    report = memorization_report(run)
    if not cfg.localize:
        return MemorizationTraining(report)
    progress.message("localising ...")
    with torch_threads(cfg.threads):
        return MemorizationTraining(report, localize_run(run))
