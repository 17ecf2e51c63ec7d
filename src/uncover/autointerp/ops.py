"""The operation of offline auto-interpretability: ``explain`` (features of an SAE, or MLP neurons).

``uncover explain --feature 3,17`` explains latents of an SAE (a run or SAE directory; without one,
the model's quick SAE, :func:`~uncover.sae.quick.quick_sae`) or, with ``--source neuron --layer L``,
MLP neurons, from their top-activating contexts on held-out text, and scores each explanation by
detection and fuzzing against another feature's explanation
(:func:`~uncover.autointerp.explain.explain_features`). The explainer and scorer is the model
analysed, or ``--explainer``: any model :func:`uncover.load` opens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from uncover.autointerp.explain import Explanations
from uncover.core.config import SEED_MAX, Config, param
from uncover.core.errors import UsageError
from uncover.ops.registry import operation

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class ExplainConfig(Config):
    """Explain features from their top-activating contexts and score the explanations.

    >>> ExplainConfig(feature=[3])
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: ExplainConfig: feature (--feature) needs at least 2 item(s), got 1
    """

    feature: list[int] = param(help="Feature (or neuron) indices, at least two: each one's baseline is the next "
                                    "one's explanation", ge=0, min_items=2)
    path: Path | None = param(None, help="SAE directory (SAELens format) or SAE training run (default: the model's "
                                         "quick SAE)", positional=True, path="in_dir")
    source: Literal["sae", "neuron"] = param("sae", help="Explain SAE latents, or MLP neurons of --layer")
    layer: int | None = param(None, help="The neurons' layer (--source neuron)", unit="layer")
    blocks: int = param(64, help="Held-out corpus blocks of 65 tokens to stream", ge=1)
    ctx_len: int = param(16, help="Tokens per context", ge=2, le=64)
    n_explain: int = param(8, help="Top-activating contexts shown to the explainer", ge=1)
    n_holdout: int = param(8, help="Held-out activating (and as many non-activating) contexts to score with", ge=1)
    mark: float = param(0.25, help="Tokens above this fraction of the feature's top activation are marked", gt=0,
                        lt=1)
    explainer: str | None = param(None, help="Model that explains and scores (default: the model analysed)",
                                  nonempty=True)
    seed: int = param(0, help="Seed of the held-out samples", ge=0, le=SEED_MAX)

    def validate(self) -> None:
        if self.source == "neuron" and self.layer is None:
            raise UsageError("ExplainConfig: --source neuron needs --layer")
        if self.source == "neuron" and self.path is not None:
            raise UsageError("ExplainConfig: an SAE path explains SAE latents; drop it or use --source sae")
        if self.source == "sae" and self.layer is not None:
            raise UsageError("ExplainConfig: --layer is for --source neuron (an SAE has its own hook)")
        if self.path is not None:
            from uncover.sae.sites import sae_dir

            sae_dir(self.path, "ExplainConfig: path")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        n = self._n_features(model)
        bad = [f for f in self.feature if f >= n]
        if bad:
            raise UsageError(f"ExplainConfig: feature (--feature) {bad[0]} is out of range; valid: 0..{n - 1}")

    def _n_features(self, model: HookedModel) -> int:
        if self.source == "neuron":
            return int(model.cfg.d_mlp)
        if self.path is None:
            from uncover.sae.quick import QuickSAESpec

            return QuickSAESpec().expansion * model.cfg.d_model
        from uncover.core.userfiles import fields_from, read_json
        from uncover.sae.base import CFG_FILE
        from uncover.sae.sites import sae_dir

        cfg = sae_dir(self.path) / CFG_FILE
        with fields_from(f"SAE config {cfg}"):
            return int(read_json(cfg, "SAE config", keys=["d_sae"])["d_sae"])


@operation("explain", ExplainConfig, Explanations, long=True,
           example={"feature": [2, 3], "blocks": 16, "ctx_len": 12, "n_explain": 4, "n_holdout": 2})
def explain(model: HookedModel, cfg: ExplainConfig, progress: Progress) -> Explanations:
    """Explain features with a local model; score the explanations by detection and fuzzing."""
    from uncover.autointerp.explain import explain_features
    from uncover.autointerp.sources import neuron_source
    from uncover.data.corpus import token_blocks

    if cfg.source == "neuron":
        source = neuron_source(model, int(cfg.layer or 0))
    elif cfg.path is not None:
        from uncover.sae.sites import load_sae_dir

        source = load_sae_dir(cfg.path)
    else:
        from uncover.sae.quick import quick_sae

        progress.message("no SAE path given: using the quick SAE (trained on first use, then cached)")
        source = quick_sae(model, progress=bool(progress))
    judge = None
    if cfg.explainer is not None:
        from uncover.hooks.hooked import load

        judge = load(cfg.explainer)
    tokens = token_blocks(model, block_len=65, split="heldout")[: cfg.blocks]
    return explain_features(model, source, cfg.feature, tokens, scorer_model=judge, ctx_len=cfg.ctx_len,
                            n_explain=cfg.n_explain, n_holdout=cfg.n_holdout, mark=cfg.mark, seed=cfg.seed,
                            progress=progress)
