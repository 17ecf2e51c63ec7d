"""``uncover heads``: head detectors, composition scores, the induction loss curve and pattern views."""

from __future__ import annotations

from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model
from uncover.core.errors import UncoverError

DETECT = ("induction", "previous", "duplicate", "copying", "loss")


def heads(
    detect: str | None = typer.Option(None, "--detect", "-d",
                                      help="induction, previous, duplicate, copying, or loss (induction loss curve)"),
    pattern: str | None = typer.Option(None, "--pattern", "-p", help="Show attention patterns on this prompt"),
    head: list[str] = typer.Option([], "--head", help="Head for --pattern, LAYER.HEAD (repeatable); default: top "
                                                      "induction heads"),
    layer: int | None = typer.Option(None, "--layer", help="Every head of this layer for --pattern"),
    compose: str | None = typer.Option(None, "--compose", help="Composition scores between heads: q, k or v"),
    top: int = typer.Option(10, "--top", help="How many heads (or head pairs) to list"),
    n: int = typer.Option(8, "--n", help="Repeated-token sequences for the detectors"),
    seq_len: int = typer.Option(20, "--seq-len", help="Length of each repeat"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Attention heads: detect induction/previous-token/duplicate/copying heads, composition, patterns."""
    chosen = [x for x in (detect, pattern, compose) if x is not None]
    if len(chosen) != 1:
        raise UncoverError("give exactly one of --detect KIND, --pattern PROMPT or --compose q|k|v")
    if detect is not None and detect not in DETECT:
        raise UncoverError(f"unknown --detect {detect!r}; valid: {', '.join(DETECT)}")
    if compose is not None and compose not in ("q", "k", "v"):
        raise UncoverError(f"unknown --compose {compose!r}; valid: q, k, v")
    if pattern is not None and head:
        from uncover.heads.patterns import parse_head

        for h in head:
            parse_head(h)  # a malformed head is a usage error before the model loads
    m = load_model(model)
    if detect == "loss":
        from uncover.heads.induction import induction_loss

        emit(induction_loss(m, n=n, seq_len=seq_len), as_json, html)
    elif detect is not None:
        from uncover.heads.detectors import head_scores

        result = head_scores(m, detect, n=n, seq_len=seq_len) if detect != "copying" else head_scores(m, detect)
        emit(result, as_json, html)
        if not as_json:
            print("\n".join(f"  L{li}H{h}  {s:.3f}" for li, h, s in result.top(top)))
    elif compose is not None:
        from uncover.heads.composition import composition_scores

        result = composition_scores(m, compose)
        emit(result, as_json, html)
        if not as_json:
            print("\n".join(f"  L{a}H{b} -> L{c}H{d}  {s:.3f}" for a, b, c, d, s in result.top(top)))
    else:
        from uncover.heads.patterns import attention_patterns

        specs: list = list(head)
        if not specs and layer is None:
            from uncover.heads.detectors import head_scores

            specs = [(li, h) for li, h, _ in head_scores(m, "induction", n=n, seq_len=seq_len).top(min(top, 4))]
        emit(attention_patterns(m, pattern, specs or None, layer=layer), as_json, html)
