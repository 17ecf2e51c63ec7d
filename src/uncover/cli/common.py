"""Shared CLI helpers: loading the model, writing JSON/HTML, usage errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from uncover.core.results import Result

MODEL_OPTION = typer.Option(None, "--model", "-m", help="Model: .gguf file, HF directory or hub id (default: embedded)")


def load_model(name: str | None, device: str | None = None, dtype: str | None = None,
               device_map: str | None = None, offload_folder: str | os.PathLike | None = None):
    """Load a model, with progress on stderr (``device_map``/``offload_folder``: see ``uncover.load``)."""
    import uncover

    print(f"uncover: loading {name or 'the embedded SmolLM2-135M-Instruct'} ...", file=sys.stderr, flush=True)
    placement = {k: v for k, v in (("device_map", device_map), ("offload_folder", offload_folder)) if v is not None}
    return uncover.load(name, device=device, dtype=dtype, **placement)


def emit(result: Result, as_json: bool, html: Path | None) -> None:
    """Print JSON (alone on stdout) or the summary, and write HTML if asked."""
    if html is not None:
        result.to_html(html)
        print(f"uncover: wrote {html.resolve()}", file=sys.stderr)
    if as_json:
        sys.stdout.write(result.to_json() + "\n")
    else:
        print(result.cli_text())
