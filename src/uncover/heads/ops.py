"""The ``heads`` operation: head detectors, the induction loss curve, composition scores, pattern views.

One command with three modes (``--detect KIND``, ``--pattern PROMPT``, ``--compose q|k|v``),
exactly one per run. Each mode's result has its own type (:class:`HeadScores`,
:class:`InductionLoss`, :class:`CompositionScores`, :class:`AttentionPatterns`); the
operation returns them wrapped in one :class:`HeadsResult`, so that no flag changes the
type the operation returns (the CLI is one command per operation, so the modes cannot be
separate operations behind one command). Library users who want a mode's own type call its
function directly (:func:`~uncover.heads.detectors.head_scores`,
:func:`~uncover.heads.induction.induction_loss`, ...) or read ``.result``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from uncover.core.config import Config, param
from uncover.core.errors import UncoverError, UsageError
from uncover.core.modes import ModeResult
from uncover.core.names import head_label
from uncover.heads.composition import CompositionScores
from uncover.heads.detectors import HeadScores
from uncover.heads.induction import InductionLoss
from uncover.heads.patterns import AttentionPatterns, parse_head
from uncover.ops.registry import operation

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel

DETECT = ("induction", "previous", "duplicate", "copying", "loss")
"""The kinds of ``--detect``: the head detectors, and ``loss`` (the induction loss curve)."""


def max_positions(model: HookedModel) -> int | None:
    """The longest sequence the model's position encoding allows (``None`` when unbounded or unknown).

    >>> max_positions(model)
    8192
    """
    hf = getattr(model.model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(hf, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@dataclass(frozen=True)
class HeadsConfig(Config):
    """Attention heads: one of --detect KIND, --pattern PROMPT or --compose q|k|v.

    >>> HeadsConfig(pattern="The cat sat. The cat", heads=["18.6", "L16H0"]).mode
    'pattern'
    >>> HeadsConfig(detect="induction", compose="k")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: HeadsConfig: give exactly one of --detect KIND, --pattern PROMPT or --compose \
q|k|v (got 2)
    """

    detect: Literal["induction", "previous", "duplicate", "copying", "loss"] | None = param(
        None, help="Head detector to run, or loss (the induction loss curve)")
    pattern: str | None = param(None, help="Show attention patterns on this prompt", nonempty=True)
    heads: list[str] = param([], help="Head for --pattern, LAYER.HEAD (repeatable); default: top induction heads",
                             flag="--head", nonempty=True)
    layer: int | None = param(None, help="Every head of this layer for --pattern", ge=0, unit="layer")
    compose: Literal["q", "k", "v"] | None = param(None, help="Composition scores between heads (Q-, K- or V-)")
    top: int = param(10, help="How many heads (or head pairs) to list", ge=1)
    n: int = param(8, help="Repeated-token sequences for the detectors", ge=1)
    seq_len: int = param(20, help="Length of each repeat", ge=2)

    @property
    def mode(self) -> str:
        """``detect``, ``pattern`` or ``compose``."""
        return "detect" if self.detect is not None else "pattern" if self.pattern is not None else "compose"

    def validate(self) -> None:
        chosen = [x for x in (self.detect, self.pattern, self.compose) if x is not None]
        if len(chosen) != 1:
            raise UsageError("HeadsConfig: give exactly one of --detect KIND, --pattern PROMPT or --compose q|k|v "
                             f"(got {len(chosen)})")
        if self.pattern is None and (self.heads or self.layer is not None):
            raise UsageError("HeadsConfig: --head and --layer choose the heads of --pattern; give --pattern PROMPT")
        if self.heads and self.layer is not None:
            raise UsageError("HeadsConfig: give --head LAYER.HEAD or --layer LAYER, not both")
        for h in self.heads:
            try:
                parse_head(h)
            except UncoverError as e:
                raise UsageError(f"HeadsConfig: heads (--head): {e}") from None

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        c = model.cfg
        for h in self.heads:
            try:
                parse_head(h, c.n_layers, c.n_heads)
            except UncoverError as e:
                raise UsageError(f"HeadsConfig: heads (--head): {e}") from None
        if self.compose is not None and c.n_layers < 2:
            raise UsageError("HeadsConfig: --compose needs a model of at least two layers")
        longest = max_positions(model)
        if self.mode != "compose" and self.detect != "copying" and longest and 1 + 2 * self.seq_len > longest:
            raise UsageError(f"HeadsConfig: seq_len (--seq-len) {self.seq_len} makes sequences of "
                             f"{1 + 2 * self.seq_len} tokens; this model takes at most {longest}")
        if self.detect is not None and self.detect != "copying":
            from uncover.core.memory import check_fits

            t = 1 + 2 * self.seq_len  # one forward over all n sequences: every pattern and the logits
            check_fits(4 * self.n * t * (c.n_layers * c.n_heads * t + c.d_vocab + 4 * c.d_model * c.n_layers),
                       f"HeadsConfig: --n {self.n} sequences of {t} tokens", "lower --n or --seq-len",
                       model.device)


@dataclass
class HeadsResult(ModeResult):
    """What ``heads`` found in its mode; ``result`` is the mode's own result.

    Attributes:
        mode: ``detect``, ``pattern`` or ``compose``.
        result: :class:`HeadScores` (``detect`` a head kind), :class:`InductionLoss` (``detect loss``),
            :class:`CompositionScores` (``compose``) or :class:`AttentionPatterns` (``pattern``).
        top: how many heads (or head pairs) the text lists.

    >>> import uncover as uc
    >>> r = uc.run("heads", model, detect="previous", n=2, seq_len=8, top=3)
    >>> type(r.result).__name__, len(r.cli_text().splitlines())
    ('HeadScores', 4)
    """

    result: HeadScores | InductionLoss | CompositionScores | AttentionPatterns
    top: int = 10

    def cli_text(self) -> str:
        """The summary, then the ``top`` heads (or head pairs) one per line for detectors and composition."""
        r = self.result
        if isinstance(r, HeadScores):
            rows = [f"  {head_label(li, h)}  {s:.3f}" for li, h, s in r.top(self.top)]
        elif isinstance(r, CompositionScores):
            rows = [f"  {head_label(a, b)} -> {head_label(c, d)}  {s:.3f}" for a, b, c, d, s in r.top(self.top)]
        else:
            rows = []
        return "\n".join([r.summary(), *rows])


@operation("heads", HeadsConfig, HeadsResult, example={"detect": "induction", "n": 2, "seq_len": 8})
def heads(model: HookedModel, cfg: HeadsConfig, progress: Progress) -> HeadsResult:
    """Attention heads: detect induction/previous-token/duplicate/copying heads, composition, patterns."""
    from uncover.heads.detectors import head_scores

    result: HeadScores | InductionLoss | CompositionScores | AttentionPatterns
    if cfg.detect == "loss":
        from uncover.heads.induction import induction_loss

        result = induction_loss(model, n=cfg.n, seq_len=cfg.seq_len)
    elif cfg.detect == "copying":
        result = head_scores(model, "copying")
    elif cfg.detect is not None:
        result = head_scores(model, cfg.detect, n=cfg.n, seq_len=cfg.seq_len)
    elif cfg.compose is not None:
        from uncover.heads.composition import composition_scores

        result = composition_scores(model, cfg.compose)
    else:
        from uncover.heads.patterns import attention_patterns

        specs: list = list(cfg.heads)
        if not specs and cfg.layer is None:
            scores = head_scores(model, "induction", n=cfg.n, seq_len=cfg.seq_len)
            specs = [(li, h) for li, h, _ in scores.top(min(cfg.top, 4))]
        result = attention_patterns(model, cfg.pattern, specs or None, layer=cfg.layer)
    return HeadsResult(cfg.mode, result, cfg.top)
