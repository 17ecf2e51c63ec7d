"""``uncover dla PROMPT --answer TOKEN --wrong TOKEN``: direct logit attribution."""

from __future__ import annotations

from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model


def dla(
    prompt: str = typer.Argument(..., help="Prompt text"),
    answer: str = typer.Option(..., "--answer", "-a", help="The answer token (one token, mind the leading space)"),
    wrong: str = typer.Option(..., "--wrong", "-w", help="The wrong token to compare against"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Direct logit attribution of logit[answer] - logit[wrong] to embeddings, heads and MLPs."""
    from uncover.attribution.dla import direct_logit_attribution

    m = load_model(model)
    emit(direct_logit_attribution(m, prompt, answer, wrong), as_json, html)
