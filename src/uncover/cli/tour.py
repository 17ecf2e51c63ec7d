"""``uncover tour``: the main job, one HTML report of every technique on a model."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, load_model
from uncover.core.config import check_writable


def tour(
    model: str | None = MODEL_OPTION,
    out: Path = typer.Option(Path("uncover-tour.html"), "--out", "-o", help="Where to write the report"),
) -> None:
    """Run the tour (logit lens, direct logit attribution, ...) and write one self-contained HTML report."""
    from uncover.report.tour import run_tour

    check_writable(out, what="--out")
    m = load_model(model)
    path = run_tour(m, out)
    print(f"uncover: wrote the tour to {path}", file=sys.stderr)
    print(path)
