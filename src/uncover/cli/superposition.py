"""``uncover superposition``: train toy models of superposition over a sparsity sweep (Elhage et al. 2022)."""

from __future__ import annotations

from pathlib import Path

import typer

from uncover.cli.common import emit


def superposition(
    features: int = typer.Option(20, "--features", "-n", help="Number of features"),
    dims: int = typer.Option(5, "--dims", "-m", help="Hidden dimensions"),
    sparsity: str = typer.Option("0,0.7,0.9,0.97,0.99", "--sparsity", help="Sparsity levels, comma-separated"),
    decay: float = typer.Option(0.7, "--decay", help="Importance of feature i is decay**i"),
    steps: int = typer.Option(3000, "--steps", help="Adam steps"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Toy models of superposition: features represented, W^T W and feature dimensionality per sparsity."""
    from uncover.core.errors import UncoverError
    from uncover.neurons.superposition import train_toy_models

    try:
        levels = [float(s) for s in sparsity.split(",")]
    except ValueError:
        raise UncoverError(f"--sparsity must be comma-separated numbers in [0, 1), got {sparsity!r}") from None
    result = train_toy_models(features, dims, levels, decay, steps=steps, seed=seed)
    emit(result, as_json, html)
