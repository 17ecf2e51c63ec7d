"""``uncover lens PROMPT``: the logit lens at the last position (or all with --all-positions)."""

from __future__ import annotations

from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model


def lens(
    prompt: str = typer.Argument(..., help="Prompt text"),
    model: str | None = MODEL_OPTION,
    target: list[str] = typer.Option([], "--target", "-t", help="Token to track (repeatable; one token each)"),
    all_positions: bool = typer.Option(False, "--all-positions", help="Read every position, not only the last"),
    k: int = typer.Option(5, "--k", help="Top-k tokens per layer"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Logit lens: what the residual stream predicts after each layer."""
    from uncover.lenses.logit_lens import logit_lens

    m = load_model(model)
    result = logit_lens(m, prompt, positions=None if all_positions else -1, targets=target or None, k=k)
    emit(result, as_json, html)
