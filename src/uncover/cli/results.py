"""``uncover list``, ``uncover rerun RESULT`` and ``uncover compare A B``: the registry and saved results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from uncover.cli.common import emit


def list_operations(as_json: bool = typer.Option(False, "--json", help="Print every operation with its config "
                                                                        "schema as JSON")) -> None:
    """List every operation (the commands generated from the registry) with its options."""
    from uncover.cli.generate import example_command
    from uncover.ops.registry import operations

    ops = operations()
    if as_json:
        sys.stdout.write(json.dumps([op.describe() for op in ops], indent=1) + "\n")
        return
    for op in ops:
        flags = [k for k in ("long", "changes_weights") if getattr(op, k)]
        print(f"{op.name:22s} {op.help}" + (f"  [{', '.join(flags)}]" if flags else ""))
        if op.example is not None:
            print(f"    example: {example_command(op)}")
        for f in op.config.schema()["fields"]:
            default = "" if f["required"] else f" = {f['default']!r}"
            name = f["name"] if f["positional"] else f["option"]
            print(f"    {name:22s} {f['type']}{default}: {f['help']}")


def rerun(
    path: Path = typer.Argument(..., help="A result saved with --result (or Result.save)"),
    model: str | None = typer.Option(None, "--model", "-m", help="Rerun on this model instead of the original's"),
    device: str | None = typer.Option(None, "--device", help="Device (default: cuda if available, else cpu)"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
    result_path: Path | None = typer.Option(None, "--result", help="Save the new result here"),
) -> None:
    """Re-execute a saved result's operation and say whether it reproduces (exit 1 if it does not)."""
    from uncover.cli.common import load_model
    from uncover.core.persist import load_result
    from uncover.ops.reproduce import rerun as rerun_fn

    _check_outputs(html=html, result=result_path)
    old = load_result(path)
    m = load_model(model, device=device) if model is not None else None
    verdict, new = rerun_fn(old, m, device=device, progress=True)
    if result_path is not None:
        new.save(result_path)
    emit(verdict, as_json, html)
    if not verdict.reproduced and verdict.deterministic:
        raise SystemExit(1)


def compare(
    a: Path = typer.Argument(..., help="First saved result"),
    b: Path = typer.Argument(..., help="Second saved result (same operation)"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write both reports side by side here"),
) -> None:
    """Show two results of the same operation side by side (e.g. before and after an edit)."""
    from uncover.core.persist import load_result
    from uncover.ops.reproduce import compare as compare_fn

    _check_outputs(html=html)
    emit(compare_fn(load_result(a), load_result(b)), as_json, html)


def _check_outputs(**paths: Path | None) -> None:
    """Refuse unwritable output paths (``--html``, ``--result``) before any work, as the generated commands do."""
    from uncover.core.config import check_writable

    for option, p in paths.items():
        if p is not None:
            check_writable(p, what=f"--{option}")
