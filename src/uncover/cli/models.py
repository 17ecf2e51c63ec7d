"""``uncover models``: supported families, the default model and the cache location."""

from __future__ import annotations

import json
import sys

import typer

from uncover.models.families import FAMILIES
from uncover.models.load import EMBEDDED_NAME, cache_dir, embedded_gguf


def models(as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout")) -> None:
    """List supported architecture families, the embedded default model and the cache directory."""
    try:
        embedded = str(embedded_gguf())
    except Exception as e:  # the embedded package may be missing: say so, do not fail
        embedded = f"not installed ({e})"
    info = {
        "default_model": EMBEDDED_NAME,
        "embedded_gguf": embedded,
        "cache_dir": str(cache_dir()),
        "families": {f.name: list(f.model_types) for f in FAMILIES},
    }
    if as_json:
        sys.stdout.write(json.dumps(info, indent=1) + "\n")
        return
    print(f"default model: {EMBEDDED_NAME}\n  file: {embedded}\ncache: {info['cache_dir']}\nfamilies:")
    for name, types in info["families"].items():
        print(f"  {name:10s} model_type: {', '.join(types)}")
