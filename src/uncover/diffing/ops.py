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
from typing import TYPE_CHECKING, Literal

from uncover.core.config import Config, param
from uncover.core.errors import UsageError
from uncover.diffing.diff import ModelDiff
from uncover.ops.registry import operation

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel

PROBES = ["The Eiffel Tower is in the city of", "The Colosseum is in the city of",
          "The capital of France is", "Paris is the capital of", "The Louvre is in the city of"]


@dataclass(frozen=True)
class DiffConfig(Config):
    """Diff the loaded model against CHANGED: predictions, causal traces, changed features, weight delta.

    >>> DiffConfig(changed="edited/").edit_subject is None
    True
    >>> DiffConfig()
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: DiffConfig: give CHANGED (a model, a saved edit, a weight change or a steering \
vector) or --edit-subject and --edit-target (an edit made on the spot), not neither
    """

    changed: str | None = param(None, help="The changed model: a model (.gguf, HF directory, hub id), a saved edit "
                                           "directory, a weight-change file or a steering vector", positional=True)
    edit_subject: str | None = param(None, help="Instead of CHANGED: edit this subject's fact on the spot",
                                     nonempty=True)
    edit_target: str | None = param(None, help="The new object of the edit, with its leading space: ' Rome'")
    edit_prompt: str = param("{} is in the city of", help="The edit's prompt, with {} for the subject",
                             nonempty=True)
    edit_method: Literal["rome", "memit", "kn"] = param("rome", help="Editing method of the on-the-spot edit")
    edit_layer: int | None = param(None, help="Edited layer (default: from causal tracing)", ge=0, unit="layer")
    mom2_samples: int = param(20_000, help="Corpus tokens for ROME/MEMIT key statistics", ge=1)
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
    steer_scale: float = param(4.0, help="Scale of a steering vector given as CHANGED", gt=0)
    top: int = param(8, help="Features to list", ge=1)
    seed: int = param(0, help="Seed of the traces' noise and of the crosscoder")

    def validate(self) -> None:
        edit = self.edit_subject is not None or self.edit_target is not None
        if (self.changed is None) == (not edit):
            raise UsageError("DiffConfig: give CHANGED (a model, a saved edit, a weight change or a steering vector) "
                             "or --edit-subject and --edit-target (an edit made on the spot), not "
                             + ("both" if edit else "neither"))
        if edit and (self.edit_subject is None or self.edit_target is None or not self.edit_target.strip()):
            raise UsageError("DiffConfig: an on-the-spot edit needs both --edit-subject and --edit-target "
                             "(e.g. --edit-subject 'The Eiffel Tower' --edit-target ' Rome')")
        if self.subject not in self.subject_prompt:
            raise UsageError(f"DiffConfig: subject (--subject) {self.subject!r} is not in the subject prompt "
                             f"{self.subject_prompt!r}")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        if model.tokenizer is None:
            raise UsageError("DiffConfig: the model has no tokenizer; diff text probes need one "
                             "(use uncover.diffing.model_diff with token ids)")


@operation("diff", DiffConfig, ModelDiff, long=True, rtol=1e-3, atol=1e-4,
           example={"edit_subject": "The Eiffel Tower", "edit_target": " Rome", "edit_method": "kn",
                    "edit_layer": 28, "probe": ["The Eiffel Tower is in the city of", "The capital of France is"],
                    "trace": "none"})
def diff(model: HookedModel, cfg: DiffConfig, progress: Progress) -> ModelDiff:
    """Diff two models side by side: predictions, causal traces, changed features, weight delta."""
    import torch

    from uncover.core.names import act_name
    from uncover.diffing.changed import resolve_change
    from uncover.diffing.diff import model_diff

    changed: object = cfg.changed
    layer = None
    if cfg.changed is None:
        from uncover.editing import edit

        progress.message(f"editing {cfg.edit_subject!r} -> {cfg.edit_target!r} with {cfg.edit_method} ...")
        options = {"progress": bool(progress)} if cfg.edit_method != "kn" else {}
        e = edit(model, cfg.edit_prompt, cfg.edit_subject, cfg.edit_target, method=cfg.edit_method,
                 layer=cfg.edit_layer, mom2_samples=cfg.mom2_samples, **options)
        e.revert()  # the diff applies it while it looks at the changed model
        changed, layer = e, (e.layers[0] if e.layers else None)
    change = resolve_change(model, changed, cfg.steer_scale)
    if layer is None and change.tensors:
        import re

        found = [int(m.group(1)) for k in change.tensors if (m := re.search(r"layers?\.(\d+)\.", k))]
        layer = min(found) if found else None
    hook = cfg.hook or act_name("resid_post", layer if layer is not None else model.cfg.n_layers // 2)
    corpus = None
    if cfg.crosscoder_steps:
        from uncover.data.corpus import token_blocks

        blocks = token_blocks(model, block_len=64)
        n = min(len(blocks), -(-cfg.tokens // 63))
        corpus = blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(cfg.seed))[:n]]
    return model_diff(model, change, cfg.probe,
                      subject_prompt=None if cfg.trace == "none" else cfg.subject_prompt, subject=cfg.subject,
                      trace_kind=cfg.trace, trace_samples=cfg.samples, features=cfg.features,
                      crosscoder_steps=cfg.crosscoder_steps, hook=hook, corpus_tokens=corpus, top=cfg.top,
                      seed=cfg.seed, progress=progress)
