"""``uncover edit``: rewrite one fact with ROME, MEMIT or a knowledge-neuron edit; show before/after; save the delta."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model
from uncover.core.errors import UncoverError


def edit(
    prompt: str = typer.Option(..., "--prompt", "-p", help="Prompt with {} for the subject, or containing the subject"),
    subject: str = typer.Option(..., "--subject", "-s", help="The subject whose fact is rewritten"),
    target: str = typer.Option(..., "--target", "-t", help="The new object, with its leading space: ' Rome'"),
    method: str = typer.Option("rome", "--method", help="rome, memit or kn"),
    layer: int | None = typer.Option(None, "--layer", "-l",
                                     help="Edited layer (rome, kn) or centre of the 5 MEMIT layers; "
                                          "default: from causal tracing"),
    check: list[str] = typer.Option([], "--check", help="Another prompt to show before/after (repeatable)"),
    mom2_samples: int = typer.Option(20_000, "--mom2-samples", help="Corpus tokens for the key statistics"),
    margin: float | None = typer.Option(None, "--margin",
                                        help="kn only: nats by which the new object must beat the old (default 1)"),
    gen_tokens: int = typer.Option(20, "--gen-tokens", help="Tokens generated before/after (0: none)"),
    save: Path | None = typer.Option(None, "--save", help="Save the edit (delta.safetensors + edit.json) here"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Edit a fact in the model's weights and print predictions and generations before and after."""
    from uncover.editing import METHODS, Request
    from uncover.editing import edit as edit_fn
    from uncover.editing.evaluate import EditReport, prediction_rows

    # usage errors are found before the model loads or any weight changes
    if method not in METHODS:
        raise UncoverError(f"unknown --method {method!r}; valid: {', '.join(METHODS)}")
    req = Request.make(prompt, subject, target)
    if not target.strip():
        raise UncoverError(f"--target {target!r} tokenises to no tokens; give a word such as ' Rome'")
    if layer is not None and layer < 0:
        raise UncoverError(f"--layer must be ≥ 0, not {layer}")
    if margin is not None and (method != "kn" or margin <= 0):
        raise UncoverError(f"--margin is for --method kn and must be > 0 (got {margin} with {method})")
    if mom2_samples < 1 or gen_tokens < 0:
        raise UncoverError("--mom2-samples must be ≥ 1 and --gen-tokens ≥ 0")
    if save is not None and save.exists() and not save.is_dir():
        raise UncoverError(f"--save {save} exists and is not a directory")

    m = load_model(model)
    prompts = [req.text, *check]
    before = prediction_rows(m, prompts, target, "before", gen_tokens)
    print(f"uncover: editing with {method} ...", file=sys.stderr, flush=True)
    extra = {"margin": margin} if margin is not None else {}
    e = edit_fn(m, req.prompt, req.subject, req.target, method=method, layer=layer, mom2_samples=mom2_samples,
                **extra)
    after = prediction_rows(m, prompts, target, "after", gen_tokens)
    saved = str(e.save(save)) if save is not None else None
    rows = [r for pair in zip(before, after) for r in pair]
    emit(EditReport(e, rows, saved), as_json, html)
