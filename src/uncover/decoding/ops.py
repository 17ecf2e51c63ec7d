"""The ``dola`` operation: DoLa (Chuang et al. 2024) next to greedy decoding, prompt by prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from uncover.core.config import PENALTY_MAX, Config, param
from uncover.core.errors import UncoverError, UsageError
from uncover.decoding.compare import DecodingComparison, compare_decoding
from uncover.decoding.dola import BUCKETS, candidate_layers
from uncover.ops.registry import operation

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class DolaConfig(Config):
    """DoLa and greedy continuations of one or more prompts.

    >>> DolaConfig(prompts=["The capital of France is"], layers="16,18").layers
    '16,18'
    """

    prompts: list[str] = param(help="One or more prompts", positional=True, nonempty=True, min_items=1)
    layers: str = param("high", help=f"Premature-layer bucket ({', '.join(BUCKETS)}) or layers like 16,18,20",
                        nonempty=True)
    max_new_tokens: int = param(20, help="Tokens to generate", ge=1, unit="context")
    alpha: float = param(0.1, help="Adaptive plausibility threshold in (0, 1]", gt=0, le=1)
    repetition_penalty: float = param(1.0, help="1 = none; the paper uses 1.2; in (0, 10]", gt=0,
                                      le=PENALTY_MAX)

    def validate(self) -> None:
        if self.layers not in BUCKETS and not all(x.strip().isdigit() for x in self.layers.split(",")):
            raise UsageError(f"DolaConfig: unknown layers (--layers) {self.layers!r}; valid: {', '.join(BUCKETS)} "
                             "or comma-separated layers")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        try:
            candidate_layers(model, self.layers)
        except UncoverError as e:
            raise UsageError(f"DolaConfig: layers (--layers): {e}") from None


@operation("dola", DolaConfig, DecodingComparison,
           example={"prompts": ["The capital of France is"], "max_new_tokens": 2})
def dola(model: HookedModel, cfg: DolaConfig, progress: Progress) -> DecodingComparison:
    """Generate with DoLa and with greedy decoding, side by side.

    >>> r = uncover.run("dola", model, prompts=["The capital of Japan is"], max_new_tokens=4)
    >>> r.rows[0]["dola"]
    ' Tokyo.'
    """
    return compare_decoding(model, cfg.prompts, cfg.max_new_tokens, layers=cfg.layers, alpha=cfg.alpha,
                            repetition_penalty=cfg.repetition_penalty)
