"""``uncover attribute``: attribution patching of one clean/corrupt pair, optionally next to exact patching."""

from __future__ import annotations

from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model, resolve_pair


def attribute(
    clean: str | None = typer.Option(None, "--clean", help="Clean prompt"),
    corrupt: str | None = typer.Option(None, "--corrupt", help="Corrupt prompt (same token count)"),
    answer: str | None = typer.Option(None, "--answer", "-a", help="The clean answer token"),
    wrong: str | None = typer.Option(None, "--wrong", "-w", help="The competing token"),
    task: str | None = typer.Option(None, "--task", help="Take the first pair of a task: ioi, facts, greater_than"),
    hook: str = typer.Option("resid_pre", "--hook", help="resid_pre, attn_out, mlp_out or z"),
    per: str = typer.Option("pos", "--per", help="pos (resid/attn/mlp), head or head_pos (z)"),
    metric: str = typer.Option("logit_diff", "--metric", help="logit_diff, prob or logprob"),
    direction: str = typer.Option("denoise", "--direction", help="denoise (patch clean into corrupt) or noise"),
    compare: bool = typer.Option(False, "--compare", help="Also run exact activation patching; report correlation"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Attribution patching (gradient × activation difference) over (layer, position) or (layer, head) sites."""
    from uncover.attribution.attribution_patching import attribution_patching, compare_attribution

    m = load_model(model)
    clean, corrupt, answer, wrong = resolve_pair(m, task, clean, corrupt, answer, wrong)
    kw = {"metric": metric, "direction": direction}
    if compare:
        result = compare_attribution(m, clean, corrupt, answer, wrong, sites=[(hook, per)], **kw)
    else:
        result = attribution_patching(m, clean, corrupt, answer, wrong, hook=hook, per=per, **kw)
    emit(result, as_json, html)
