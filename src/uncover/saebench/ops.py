"""The operation of SAEBench-style metrics: ``sae bench`` (in the ``sae`` command group).

``uncover sae bench [PATH]`` measures one SAE (a run or SAE directory; without one, the model's quick
SAE): L0, dead and dense latents, variance explained and loss recovered on held-out text, sparse
probing on built-in labelled sets, and first-letter feature absorption
(:func:`~uncover.saebench.bench.sae_bench`), as one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uncover.core.config import SEED_MAX, Config, param
from uncover.core.errors import UsageError
from uncover.data.labelled import DATA_HELP, check_dataset
from uncover.ops.registry import operation
from uncover.saebench.bench import SAEBenchResult

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class SAEBenchConfig(Config):
    """SAEBench-style metrics of one SAE, as one table.

    >>> SAEBenchConfig(datasets=["sentiment"], k=[1, 4]).k
    [1, 4]
    """

    path: Path | None = param(None, help="SAE directory (SAELens format) or SAE training run (default: the model's "
                                         "quick SAE)", positional=True, path="in_dir")
    blocks: int = param(16, help="Held-out corpus blocks of 128 tokens for L0, dead/dense latents, loss recovered",
                        ge=1)
    datasets: list[str] = param(["truth", "sentiment"], help=f"Labelled sets for sparse probing ({DATA_HELP})",
                                flag="--data")
    k: list[int] = param([1, 2, 5], help="Latents kept by the sparse probes", ge=1, min_items=1)
    per_letter: int = param(40, help="Vocabulary words per first letter for absorption (0: skip absorption)",
                            ge=0)
    seed: int = param(0, help="Seed of the splits and of the word sample", ge=0, le=SEED_MAX)

    def validate(self) -> None:
        for d in self.datasets:
            try:
                check_dataset(d)
            except UsageError as e:
                raise UsageError(f"SAEBenchConfig: datasets (--data): {e}") from None
        if self.path is not None:
            from uncover.sae.sites import sae_dir

            sae_dir(self.path, "SAEBenchConfig: path")


@operation("sae bench", SAEBenchConfig, SAEBenchResult,
           example={"blocks": 1, "datasets": ["sentiment"], "k": [1, 2], "per_letter": 12})
def sae_bench_op(model: HookedModel, cfg: SAEBenchConfig, progress: Progress) -> SAEBenchResult:
    """SAEBench-style metrics: L0, dead/dense latents, loss recovered, sparse probing, absorption."""
    from uncover.data.corpus import token_blocks
    from uncover.data.labelled import load_labelled
    from uncover.saebench.bench import sae_bench

    if cfg.path is not None:
        from uncover.sae.sites import load_sae_dir

        sae = load_sae_dir(cfg.path)
    else:
        from uncover.sae.quick import quick_sae

        progress.message("no SAE path given: using the quick SAE (trained on first use, then cached)")
        sae = quick_sae(model, progress=bool(progress))
    tokens = token_blocks(model, block_len=128, split="heldout")[: cfg.blocks]
    data = [load_labelled(d, model) for d in cfg.datasets]
    return sae_bench(model, sae, tokens, data, cfg.k, cfg.per_letter, cfg.seed, progress)
