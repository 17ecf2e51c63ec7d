"""The ``prune`` operation: magnitude, Wanda, SparseGPT or structured pruning, evaluated and saved.

The result (:class:`~uncover.pruning.evaluate.PruneReport`) holds the applied
:class:`~uncover.pruning.base.Pruning` (measured sparsity per module; the model and the undo
buffer are not saved with the result), the held-out perplexity and fact accuracy before and
after, and where the pruned model was saved. The model stays pruned: ``report.pruning.revert()``
undoes it bit-exactly. If anything fails after the weights changed (Ctrl-C included), the
pruning is reverted before the error propagates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from uncover.core.config import Config, param
from uncover.core.errors import UsageError
from uncover.ops.registry import operation
from uncover.pruning import Pruning, PruningError
from uncover.pruning import prune as prune_fn
from uncover.pruning.base import check_sparsity, resolve_target
from uncover.pruning.evaluate import PruneReport, evaluate, heldout_tokens, save_pretrained
from uncover.pruning.structured import prune_structured

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class PruneConfig(Config):
    """Prune the linear layers of the blocks (or whole heads/neurons).

    >>> PruneConfig(method="obs")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: PruneConfig: unknown method (--method) 'obs'; valid: magnitude, wanda, sparsegpt
    """

    method: Literal["magnitude", "wanda", "sparsegpt"] | None = param(None, help="Unstructured method "
                                                                                 "(default wanda)")
    sparsity: float | None = param(None, help="Fraction of weights (or heads/neurons) removed, in [0, 1); "
                                              "default 0.5 unless --pattern is given")
    pattern: str | None = param(None, help="N:M semi-structured sparsity, e.g. 2:4 or 4:8", nonempty=True)
    structured: Literal["heads", "neurons"] | None = param(None, help="Remove whole units")
    scorer: Literal["activation", "attribution"] = param("attribution", help="Unit importance for --structured")
    out: Path | None = param(None, help="Save the pruned model in this directory (safetensors + tokenizer)",
                             path="out_dir")
    n_samples: int = param(16, help="Calibration blocks of 128 tokens (train split of the corpus)", flag="--calib",
                           ge=1)
    eval_blocks: int = param(8, help="Held-out blocks of 128 tokens for perplexity (0: skip the evaluation)", ge=0)

    def validate(self) -> None:
        def refuse(label: str, e: Exception) -> UsageError:
            return UsageError(f"PruneConfig: {label}: {e}")

        if self.structured is not None:
            if self.method is not None or self.pattern is not None:
                raise UsageError("PruneConfig: --structured removes whole units; give it without --method/--pattern")
            try:
                check_sparsity(self.target)
            except PruningError as e:
                raise refuse("sparsity (--sparsity)", e) from None
            return
        try:
            resolve_target(self.target, self.pattern)
        except PruningError as e:
            raise refuse("sparsity (--sparsity), pattern (--pattern)", e) from None

    @property
    def target(self) -> float | None:
        """The sparsity to reach: as given, or 0.5 when neither a sparsity nor a pattern is given.

        >>> PruneConfig().target, PruneConfig(pattern="2:4").target
        (0.5, None)
        """
        return 0.5 if self.sparsity is None and (self.pattern is None or self.structured is not None) \
            else self.sparsity


@operation("prune", PruneConfig, PruneReport, changes_weights=True, long=True,
           example={"method": "magnitude", "sparsity": 0.3, "eval_blocks": 1})
def prune(model: HookedModel, cfg: PruneConfig, progress: Progress) -> PruneReport:
    """Prune every linear layer of the blocks (or whole heads/neurons) and report perplexity and sparsity.

    >>> r = uncover.run("prune", model, method="magnitude", sparsity=0.3, eval_blocks=1)  # doctest: +SKIP
    >>> r.pruning.revert()  # doctest: +SKIP
    """
    ev_tokens = heldout_tokens(model, cfg.eval_blocks) if cfg.eval_blocks else None
    before = evaluate(model, tokens=ev_tokens, label="dense") if ev_tokens is not None else None
    method = cfg.method or "wanda"
    progress.message(f"pruning ({cfg.structured or method}) ...")
    p: Pruning | None = None
    try:
        if cfg.structured is not None:
            p = prune_structured(model, cfg.structured, cfg.target, scorer=cfg.scorer,
                                 n_samples=min(cfg.n_samples, 8))
        else:
            opts = {} if method == "magnitude" else {"n_samples": cfg.n_samples}
            target, _ = resolve_target(cfg.target, cfg.pattern)
            p = prune_fn(model, method, None if cfg.pattern else target, cfg.pattern, **opts)
        evaluation = before + evaluate(model, p, tokens=ev_tokens) if before is not None else None
        saved = str(save_pretrained(model, cfg.out)) if cfg.out is not None else None
        report = PruneReport(p, evaluation, saved)
    except BaseException:  # the model is left as it was, whatever failed (Ctrl-C included)
        if p is not None:
            p.revert()
        raise
    return report
