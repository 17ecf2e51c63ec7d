"""``uncover memorization scan|train``: extraction scans of a pretrained model, and training a
tiny model with canaries and duplicates to measure memorization."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model
from uncover.core.errors import UncoverError

app = typer.Typer(no_args_is_help=True, help="Memorization: extraction scans and canary training runs.")


@app.command("scan")
def scan(
    text: str = typer.Option("mit", "--text", "-t", help="Built-in text (mit, zen, mit-shuffled) or a .txt file"),
    k: int = typer.Option(32, "--k", help="Prefix tokens"),
    suffix: int = typer.Option(16, "--suffix", help="Tokens that must be reproduced exactly"),
    stride: int = typer.Option(8, "--stride", help="Tokens between window starts"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Which spans of a text does the model reproduce verbatim from the k tokens before them?"""
    from uncover.dynamics.memorization.scan import TEXTS, builtin_text, extraction_scan

    if text in TEXTS:
        body = builtin_text(text)
    else:
        path = Path(text)
        if not path.is_file():
            raise UncoverError(f"--text {text!r} is neither a built-in text ({', '.join(TEXTS)}) nor a file")
        body = path.read_text(encoding="utf-8")
    m = load_model(model)
    emit(extraction_scan(m, body, k=k, suffix=suffix, stride=stride, name=text), as_json, html)


@app.command("train")
def train(
    steps: int = typer.Option(800, "--steps", help="Training steps"),
    dup_counts: str = typer.Option("1,4,16,64", "--dup-counts", help="Copies of each injected sequence, comma list"),
    per_count: int = typer.Option(8, "--per-count", help="Canaries and duplicated texts per copy count"),
    k_prefix: int = typer.Option(32, "--k", help="Prefix length of k-extractable memorization"),
    seed: int = typer.Option(0, "--seed", help="Seed of data and initialisation"),
    localize: bool = typer.Option(False, "--localize", help="Also attribute and ablate (prints a second report)"),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch (1 on a shared machine)"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Train a tiny byte-level GPT-2 with canaries/duplicates; memorization vs copies, membership AUROC."""
    from uncover.dynamics.memorization import MemConfig, localize_run, memorization_report, train_memorization
    from uncover.report.html import render_results

    try:
        counts = tuple(int(c) for c in dup_counts.split(",") if c.strip())
    except ValueError:
        raise UncoverError(f"--dup-counts must be comma-separated integers, not {dup_counts!r}") from None
    cfg = MemConfig(steps=steps, dup_counts=counts, per_count=per_count, k_prefix=k_prefix, seed=seed)
    run = train_memorization(cfg, threads=threads)
    result = memorization_report(run)
    if not localize:
        emit(result, as_json, html)
        return
    print("uncover: localising ...", file=sys.stderr, flush=True)
    loc = localize_run(run)
    if html is not None:
        html.write_text(render_results("Memorization", [result, loc]), encoding="utf-8")
        print(f"uncover: wrote {html.resolve()}", file=sys.stderr)
    if as_json:
        import json

        sys.stdout.write(json.dumps({"memorization": result.to_dict(), "localization": loc.to_dict()}) + "\n")
    else:
        print(result.summary())
        print(loc.summary())
