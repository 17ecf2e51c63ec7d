"""Shared CLI helpers: loading the model, writing JSON/HTML, usage errors."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from uncover.core.results import Result

MODEL_OPTION = typer.Option(None, "--model", "-m", help="Model: .gguf file, HF directory or hub id (default: embedded)")


def load_model(name: str | None, device: str | None = None, dtype: str | None = None):
    """Load a model, with progress on stderr."""
    import uncover

    print(f"uncover: loading {name or 'the embedded SmolLM2-135M-Instruct'} ...", file=sys.stderr, flush=True)
    return uncover.load(name, device=device, dtype=dtype)


def emit(result: Result, as_json: bool, html: Path | None) -> None:
    """Print JSON (alone on stdout) or the summary, and write HTML if asked."""
    if html is not None:
        result.to_html(html)
        print(f"uncover: wrote {html.resolve()}", file=sys.stderr)
    if as_json:
        sys.stdout.write(result.to_json() + "\n")
    else:
        print(result.cli_text())


def resolve_pair(model, task: str | None, clean: str | None, corrupt: str | None, answer: str | None,  # noqa: ANN001
                 wrong: str | None) -> tuple[str, str, str, str]:
    """The first pair of ``task`` that the model gets right, or the explicit pair (all four parts required)."""
    from uncover.core.errors import UncoverError
    from uncover.data.tasks import TASKS, facts_for

    if task is not None:
        if task not in TASKS:
            raise UncoverError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
        t = facts_for(model) if task == "facts" else TASKS[task]().filter_correct(model)
        if not len(t):
            raise UncoverError(f"the model gets no {task} pair right")
        p = t.pairs[0]
        return p.clean, p.corrupt, p.answer, p.wrong
    parts = (("--clean", clean), ("--corrupt", corrupt), ("--answer", answer), ("--wrong", wrong))
    missing = [n for n, v in parts if v is None]
    if missing:
        raise UncoverError(f"missing {', '.join(missing)} (or give --task)")
    return clean, corrupt, answer, wrong  # type: ignore[return-value]
