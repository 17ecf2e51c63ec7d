"""``uncover path``: path patching of sender heads into receivers (the logits or heads' q/k/v inputs)."""

from __future__ import annotations

from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model
from uncover.core.errors import UncoverError


def path(
    clean: str | None = typer.Option(None, "--clean", help="Clean prompt"),
    corrupt: str | None = typer.Option(None, "--corrupt", help="Corrupt prompt (same token count)"),
    answer: str | None = typer.Option(None, "--answer", "-a", help="The clean answer token"),
    wrong: str | None = typer.Option(None, "--wrong", "-w", help="The competing token"),
    task: str | None = typer.Option(None, "--task", help="Average over pairs of a task: ioi (ABC corruption), "
                                    "greater_than"),
    pairs: int = typer.Option(4, "--pairs", help="How many task pairs to average over"),
    receivers: str = typer.Option("logits", "--receivers", "-r",
                                  help="'logits' or comma-separated heads' inputs, e.g. L23H3.q,L23H0.q"),
    positions: str | None = typer.Option(None, "--positions", help="Receiver positions, e.g. -1 (default all)"),
    metric: str = typer.Option("logit_diff", "--metric", help="logit_diff, prob or logprob"),
    freeze_mlps: bool = typer.Option(False, "--freeze-mlps", help="Also freeze MLPs (only direct paths)"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Path patching: each sender head's effect through the chosen receivers only."""
    from uncover.data.tasks import greater_than, ioi
    from uncover.patching.path import path_patching

    tasks = {"ioi": lambda: ioi(max(8, 2 * pairs), corrupt="abc"), "greater_than": lambda: greater_than(2 * pairs)}
    m = load_model(model)
    if task is not None:
        if task not in tasks:
            raise UncoverError(f"unknown task {task!r} for path patching; valid: {', '.join(tasks)}")
        t = tasks[task]().filter_correct(m)
        chosen = [p for p in t.pairs if len(m.to_tokens(p.clean)[0]) == len(m.to_tokens(p.corrupt)[0])][:pairs]
        if not chosen:
            raise UncoverError(f"the model gets no {task} pair right")
        cl, co = [p.clean for p in chosen], [p.corrupt for p in chosen]
        an, wr = [p.answer for p in chosen], [p.wrong for p in chosen]
    else:
        missing = [n for n, v in (("--clean", clean), ("--corrupt", corrupt), ("--answer", answer),
                                  ("--wrong", wrong)) if v is None]
        if missing:
            raise UncoverError(f"missing {', '.join(missing)} (or give --task)")
        cl, co, an, wr = clean, corrupt, answer, wrong
    recv = "logits" if receivers.strip() == "logits" else [r for r in receivers.split(",") if r.strip()]
    try:
        pos = None if positions is None else [int(p) for p in positions.split(",")]
    except ValueError:
        raise UncoverError(f"--positions takes comma-separated integers such as -1 or 3,4; got {positions!r}") from None
    result = path_patching(m, cl, co, an, wr, receivers=recv, receiver_positions=pos, metric=metric,
                           freeze_mlps=freeze_mlps)
    emit(result, as_json, html)
