"""``uncover trace``: causal tracing (Meng et al. 2022) of one factual prompt, or averaged over facts."""

from __future__ import annotations

from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model
from uncover.core.errors import UncoverError


def trace(
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="Factual prompt, e.g. 'The Eiffel Tower is in'"),
    subject: str | None = typer.Option(None, "--subject", "-s", help="The subject span inside the prompt"),
    answer: str | None = typer.Option(None, "--answer", "-a", help="Answer token (default: the model's top token)"),
    task: str | None = typer.Option(None, "--task", help="facts: average over the facts the model gets right"),
    n: int = typer.Option(4, "--n", help="With --task: number of facts to average"),
    kind: str = typer.Option("all", "--kind", help="hidden, mlp, attn or all"),
    window: int = typer.Option(10, "--window", help="Layers restored together for mlp and attn"),
    samples: int = typer.Option(10, "--samples", help="Noise samples per prompt"),
    noise: float = typer.Option(3.0, "--noise", help="Noise std as a multiple of the embedding std"),
    seed: int = typer.Option(0, "--seed", help="Noise seed"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Causal tracing: restore clean states under subject noise, per (layer, token)."""
    from uncover.patching.causal_tracing import causal_trace, trace_facts

    kw = {"kind": kind, "window": window, "samples": samples, "noise": noise, "seed": seed}
    if task is not None:
        if task != "facts":
            raise UncoverError(f"unknown task {task!r} for causal tracing; valid: facts")
        if prompt is not None:
            raise UncoverError("give either --task or --prompt/--subject, not both")
        result = trace_facts(load_model(model), n=n, **kw)
    else:
        if prompt is None or subject is None:
            raise UncoverError("missing --prompt and --subject (or give --task facts)")
        result = causal_trace(load_model(model), prompt, subject, answer, **kw)
    emit(result, as_json, html)
