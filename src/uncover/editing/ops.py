"""The ``edit`` operation: rewrite one fact with ROME, MEMIT or a knowledge-neuron edit.

The result (:class:`~uncover.editing.evaluate.EditReport`) shows the top next tokens and a
greedy generation of each prompt before and after, and holds the applied
:class:`~uncover.editing.base.Edit` (its deltas are saved with the result; the model and the
undo buffer are not). The model stays edited: ``report.edit.revert()`` undoes it bit-exactly.
If anything fails after the weights changed (Ctrl-C included), the edit is reverted before the
error propagates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from uncover.core.config import NATS_MAX, Config, param
from uncover.core.errors import UsageError
from uncover.editing import Edit, EditError, Request, edit
from uncover.editing.base import check_request
from uncover.editing.evaluate import EditReport, prediction_rows
from uncover.ops.registry import operation

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class EditConfig(Config):
    """Rewrite one fact in the model's weights.

    >>> EditConfig(prompt="{} is in the city of", subject="The Eiffel Tower", target=" Rome").method
    'rome'
    """

    prompt: str = param(help="Prompt with {} for the subject, or containing the subject", nonempty=True)
    subject: str = param(help="The subject whose fact is rewritten", nonempty=True)
    target: str = param(help="The new object, with its leading space: ' Rome'")
    method: Literal["rome", "memit", "kn"] = param("rome", help="Editing method")
    layer: int | None = param(None, help="Edited layer (rome, kn) or centre of the 5 MEMIT layers; "
                                         "default: from causal tracing", ge=0, unit="layer")
    check: list[str] = param([], help="Another prompt to show before/after (repeatable)", nonempty=True)
    mom2_samples: int = param(20_000, help="Corpus tokens for the key statistics (rome, memit)", ge=1)
    margin: float | None = param(None, help="kn only: nats by which the new object must beat the old (default 1; "
                                 "at most 100)", gt=0, le=NATS_MAX)
    gen_tokens: int = param(20, help="Tokens generated before/after (0: none)", ge=0, unit="context")
    save: Path | None = param(None, help="Save the edit (delta.safetensors + edit.json) in this directory",
                              path="out_dir")

    def validate(self) -> None:
        if self.margin is not None and self.method != "kn":
            raise UsageError(f"EditConfig: margin (--margin) is for --method kn only, not {self.method}")
        if not self.target.strip():
            raise UsageError(f"EditConfig: target (--target) {self.target!r} tokenises to no tokens; give a word "
                             "such as ' Rome'")
        self.request()

    def request(self) -> Request:
        """The :class:`Request` of the prompt, subject and target (a usage error if the subject is not in it).

        >>> EditConfig(prompt="The Eiffel Tower is in", subject="Eiffel Tower", target=" Rome").request().prompt
        'The {} is in'
        """
        try:
            return Request.make(self.prompt, self.subject, self.target)
        except EditError as e:
            raise UsageError(f"EditConfig: prompt (--prompt), subject (--subject): {e}") from None

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        try:
            check_request(model, self.request())
        except EditError as e:
            raise UsageError(f"EditConfig: {e}") from None


@operation("edit", EditConfig, EditReport, changes_weights=True, long=True, rtol=1e-3, atol=1e-4,
           example={"prompt": "{} is in the city of", "subject": "The Eiffel Tower", "target": " Rome",
                    "method": "kn", "layer": 28, "gen_tokens": 0})
def edit_fact(model: HookedModel, cfg: EditConfig, progress: Progress) -> EditReport:
    """Edit a fact in the model's weights and print predictions and generations before and after.

    >>> r = uncover.run("edit", model, prompt="{} is in the city of", subject="The Eiffel Tower",
    ...                 target=" Rome", method="kn", layer=28)  # doctest: +SKIP
    >>> r.edit.revert()  # doctest: +SKIP
    """
    req = cfg.request()
    prompts = [req.text, *cfg.check]
    before = prediction_rows(model, prompts, cfg.target, "before", cfg.gen_tokens)
    progress.message(f"editing with {cfg.method} ...")
    options: dict = {"margin": cfg.margin} if cfg.margin is not None else {}
    if cfg.method != "kn":
        options["progress"] = bool(progress)
    e: Edit | None = None
    try:
        e = edit(model, req.prompt, req.subject, req.target, method=cfg.method, layer=cfg.layer,
                 mom2_samples=cfg.mom2_samples, **options)
        after = prediction_rows(model, prompts, cfg.target, "after", cfg.gen_tokens)
        saved = str(e.save(cfg.save)) if cfg.save is not None else None
        rows = [r for pair in zip(before, after) for r in pair]
        report = EditReport(e, rows, saved)
    except BaseException:  # the model is left as it was, whatever failed (Ctrl-C included)
        if e is not None:
            e.revert()
        raise
    return report
