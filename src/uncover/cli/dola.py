"""``uncover dola``: DoLa (contrast with a premature layer) next to greedy decoding."""

from __future__ import annotations

from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model
from uncover.core.errors import UncoverError


def dola(
    prompts: list[str] = typer.Argument(..., help="One or more prompts"),
    layers: str = typer.Option("high", "--layers", help="Premature-layer bucket (high, low) or layers like 16,18,20"),
    max_new_tokens: int = typer.Option(20, "--max-new-tokens", "-n", help="Tokens to generate"),
    alpha: float = typer.Option(0.1, "--alpha", help="Adaptive plausibility threshold in (0, 1]"),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="1 = none; the paper uses 1.2"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Generate with DoLa and with greedy decoding, side by side."""
    from uncover.decoding import compare_decoding
    from uncover.decoding.dola import BUCKETS

    if layers not in BUCKETS and not all(x.strip().isdigit() for x in layers.split(",")):
        raise UncoverError(f"unknown --layers {layers!r}; valid: {', '.join(BUCKETS)} or comma-separated layers")
    if not 0.0 < alpha <= 1.0:
        raise UncoverError(f"--alpha must be in (0, 1], not {alpha}")
    if max_new_tokens < 1 or repetition_penalty <= 0:
        raise UncoverError("--max-new-tokens must be >= 1 and --repetition-penalty > 0")
    m = load_model(model)
    result = compare_decoding(m, prompts, max_new_tokens, layers=layers, alpha=alpha,
                              repetition_penalty=repetition_penalty)
    emit(result, as_json, html)
