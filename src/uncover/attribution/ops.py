"""Operations of attribution: ``dla`` (direct logit attribution) and ``attribute`` (attribution patching).

Each is a config, one ``run`` and its result type (see :mod:`uncover.ops.registry`); the CLI
commands of the same names are generated from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uncover.attribution.attribution_patching import AttributionResult, attribution_patching
from uncover.attribution.dla import DLAResult, direct_logit_attribution
from uncover.core.config import Config, param
from uncover.core.errors import UsageError
from uncover.core.progress import Progress
from uncover.ops.registry import operation
from uncover.patching.activation import activation_patching
from uncover.patching.ops import FACT, FACT_CORRUPT, IOI, SitesConfig

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class DLAConfig(Config):
    """Direct logit attribution of one prompt's logit difference."""

    prompt: str = param(help="Prompt text", positional=True, nonempty=True)
    answer: str = param(help="The answer token (one token, mind the leading space)", unit="token")
    wrong: str = param(help="The wrong token to compare against (one token)", unit="token")

    def validate(self) -> None:
        super().validate()
        for name in ("answer", "wrong"):
            if getattr(self, name) == "":
                raise UsageError(f"DLAConfig: {name} (--{name}) is empty; give one token (e.g. ' Mary')")
        if self.answer == self.wrong:
            raise UsageError(f"DLAConfig: answer and wrong are the same token {self.answer!r}; the logit difference "
                             "needs two different tokens")


@operation("dla", DLAConfig, DLAResult, example={"prompt": IOI, "answer": " Mary", "wrong": " John"})
def dla(model: HookedModel, cfg: DLAConfig, progress: Progress) -> DLAResult:
    """Direct logit attribution of logit(answer) - logit(wrong) to embeddings, heads and MLPs.

    >>> r = dla(model, DLAConfig(prompt=IOI, answer=" Mary", wrong=" John"), Progress.silent())
    >>> abs(float(r.contributions.sum(0)[0] - r.logit_diff[0])) < 1e-3
    True
    """
    return direct_logit_attribution(model, cfg.prompt, cfg.answer, cfg.wrong)


@dataclass(frozen=True)
class AttributeConfig(SitesConfig):
    """Attribution patching of one clean/corrupt pair, optionally next to exact activation patching."""

    compare: bool = param(False, help="Also run exact activation patching; report the correlation")


@operation("attribute", AttributeConfig, AttributionResult,
           example={"clean": FACT, "corrupt": FACT_CORRUPT, "answer": " Paris", "wrong": " Rome",
                    "compare": True})
def attribute(model: HookedModel, cfg: AttributeConfig, progress: Progress) -> AttributionResult:
    """Attribution patching (gradient × activation difference) over (layer, position) or (layer, head) sites.

    With ``compare``, exact activation patching of the same grid is kept in the result's ``exact``.

    >>> r = attribute(model, AttributeConfig(clean=FACT, corrupt=FACT_CORRUPT, answer=" Paris", wrong=" Rome",
    ...                                      compare=True), Progress.silent())
    >>> r.exact.grid.shape == r.grid.shape, list(r.comparison().correlations()["site"])
    (True, ['resid_pre/pos'])
    """
    clean, corrupt, answer, wrong = cfg.pair(model)
    kw = {"hook": cfg.hook, "per": cfg.per, "metric": cfg.metric, "direction": cfg.direction}
    approx = attribution_patching(model, clean, corrupt, answer, wrong, **kw)
    if not cfg.compare:
        return approx
    progress.message("exact activation patching of the same grid, to compare")
    exact = activation_patching(model, clean, corrupt, answer, wrong, **kw)
    return dataclasses.replace(approx, exact=exact)
