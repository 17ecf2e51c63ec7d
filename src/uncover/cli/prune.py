"""``uncover prune``: prune the model (magnitude, Wanda, SparseGPT or structured), evaluate it, save it."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model
from uncover.core.errors import UncoverError


def prune(
    method: str | None = typer.Option(None, "--method", help="magnitude, wanda (default) or sparsegpt"),
    sparsity: float | None = typer.Option(None, "--sparsity", "-s",
                                          help="Fraction of weights (or heads/neurons) removed, in [0, 1); "
                                               "default 0.5 unless --pattern is given"),
    pattern: str | None = typer.Option(None, "--pattern", help="N:M semi-structured sparsity, e.g. 2:4 or 4:8"),
    structured: str | None = typer.Option(None, "--structured", help="Remove whole units: heads or neurons"),
    scorer: str = typer.Option("attribution", "--scorer", help="Unit importance for --structured: "
                                                               "attribution or activation"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the pruned model here (safetensors + tokenizer)"),
    calib: int = typer.Option(16, "--calib", help="Calibration blocks of 128 tokens (train split of the corpus)"),
    eval_blocks: int = typer.Option(8, "--eval-blocks", help="Held-out blocks of 128 tokens for perplexity "
                                                             "(0: skip the evaluation)"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Prune every linear layer of the blocks (or whole heads/neurons) and report perplexity and sparsity."""
    from uncover.pruning import METHODS
    from uncover.pruning import prune as prune_fn
    from uncover.pruning.base import check_sparsity, resolve_target
    from uncover.pruning.evaluate import PruneReport, evaluate, heldout_tokens, save_pretrained
    from uncover.pruning.structured import SCORERS, UNITS, prune_structured

    # every argument is checked before the model is loaded, so a usage error never touches it
    if structured is not None:
        if structured not in UNITS:
            raise UncoverError(f"unknown --structured {structured!r}; valid: {', '.join(UNITS)}")
        if method is not None or pattern is not None:
            raise UncoverError("--structured removes whole units; give it without --method/--pattern")
        if scorer not in SCORERS:
            raise UncoverError(f"unknown --scorer {scorer!r}; valid: {', '.join(SCORERS)}")
        target = check_sparsity(0.5 if sparsity is None else sparsity)
    else:
        method = method or "wanda"
        if method not in METHODS:
            raise UncoverError(f"unknown --method {method!r}; valid: {', '.join(METHODS)}")
        target, _ = resolve_target(0.5 if sparsity is None and pattern is None else sparsity, pattern)
    if calib < 1 or eval_blocks < 0:
        raise UncoverError(f"--calib must be >= 1 and --eval-blocks >= 0, not {calib} and {eval_blocks}")
    if out is not None and out.exists() and not out.is_dir():
        raise UncoverError(f"--out {out} exists and is not a directory")

    m = load_model(model)
    ev_tokens = heldout_tokens(m, eval_blocks) if eval_blocks else None
    before = evaluate(m, tokens=ev_tokens, label="dense") if ev_tokens is not None else None
    print(f"uncover: pruning ({structured or method}) ...", file=sys.stderr, flush=True)
    if structured is not None:
        p = prune_structured(m, structured, target, scorer=scorer, n_samples=min(calib, 8))
    else:
        opts = {} if method == "magnitude" else {"n_samples": calib}
        p = prune_fn(m, method, None if pattern else target, pattern, **opts)
    evaluation = None
    if before is not None:
        evaluation = before + evaluate(m, p, tokens=ev_tokens)
    saved = str(save_pretrained(m, out)) if out is not None else None
    emit(PruneReport(p, evaluation, saved), as_json, html)
