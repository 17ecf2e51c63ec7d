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
    tuned: Path | None = typer.Option(None, "--tuned", help="Use a tuned lens saved by `uncover train-lens`"),
) -> None:
    """Logit lens (or tuned lens): what the residual stream predicts after each layer."""
    from uncover.lenses.logit_lens import logit_lens
    from uncover.lenses.tuned_lens import TunedLens, tuned_lens

    m = load_model(model)
    positions = None if all_positions else -1
    if tuned is not None:
        lens_ = TunedLens.load(tuned, m)
        result = tuned_lens(m, prompt, lens_, positions=positions, targets=target or None, k=k)
    else:
        result = logit_lens(m, prompt, positions=positions, targets=target or None, k=k)
    emit(result, as_json, html)


def train_lens(
    out: Path = typer.Option(Path("tuned-lens.safetensors"), "--out", "-o", help="Where to save the lens"),
    model: str | None = MODEL_OPTION,
    steps: int = typer.Option(30, "--steps", help="KL refinement steps after the least-squares fit"),
) -> None:
    """Train a tuned lens on the embedded corpus and save it as safetensors."""
    import sys

    from uncover.lenses.tuned_lens import train_tuned_lens

    m = load_model(model)
    lens_ = train_tuned_lens(m, steps=steps, progress=True)
    lens_.save(out)
    print(f"uncover: saved the tuned lens to {out.resolve()}", file=sys.stderr)
    print(out.resolve())
