"""``uncover neurons`` (top contexts and value-vector tokens of MLP neurons) and ``uncover knowledge-neurons``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model
from uncover.core.errors import UncoverError


def _ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise UncoverError(f"expected comma-separated integers, got {text!r}") from None


def neurons(
    layer: int = typer.Option(..., "--layer", "-l", help="MLP layer"),
    neuron: str = typer.Option("0", "--neuron", "-n", help="Neuron indices, comma-separated"),
    k: int = typer.Option(10, "--k", help="Contexts (and tokens) per neuron"),
    blocks: int = typer.Option(256, "--blocks", help="Corpus blocks of 64 tokens to stream"),
    corpus: Path | None = typer.Option(None, "--corpus", help=".txt or .jsonl corpus (default: embedded)"),
    logits: bool = typer.Option(False, "--logits", help="Show promoted/suppressed tokens (Geva et al.) instead"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Top-activating corpus contexts of MLP neurons, or the tokens their value vectors promote."""
    from uncover.data.corpus import corpus_texts
    from uncover.neurons import neuron_logits, top_activations

    units = _ints(neuron)
    m = load_model(model)
    if not 0 <= layer < m.cfg.n_layers:
        raise UncoverError(f"layer {layer} out of range; valid: 0..{m.cfg.n_layers - 1}")
    if logits:
        result = neuron_logits(m, layer, units, k=k)
    else:
        bad = [u for u in units or [] if not 0 <= u < m.cfg.d_mlp]
        if bad:
            raise UncoverError(f"neuron(s) {bad} out of range; valid: 0..{m.cfg.d_mlp - 1}")
        print(f"uncover: streaming {blocks} blocks ...", file=sys.stderr)
        texts = corpus_texts(corpus) if corpus is not None else None
        result = top_activations(m, layer, units, texts=texts, k=k, max_blocks=blocks)
    emit(result, as_json, html)


def knowledge_neurons(
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="A paraphrase prompt (repeat the option)"),
    target: str = typer.Option(..., "--target", "-t", help="The answer token, e.g. ' Paris'"),
    layers: str | None = typer.Option(None, "--layers", help="Layers to attribute, comma-separated (default all)"),
    steps: int = typer.Option(20, "--steps", help="Integrated-gradient steps"),
    threshold: float = typer.Option(0.2, "--threshold", help="Keep neurons above this x the prompt's max"),
    share: float = typer.Option(0.5, "--share", help="Keep neurons found in at least this fraction of prompts"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Knowledge neurons of a fact (Dai et al. 2022) and the effect of suppressing / amplifying them."""
    from uncover.neurons import knowledge_effect
    from uncover.neurons import knowledge_neurons as find

    m = load_model(model)
    kn = find(m, prompt, target, layers=_ints(layers), steps=steps, threshold=threshold, share=share)
    if kn.neurons:
        eff = knowledge_effect(m, kn)
        print(eff.summary(), file=sys.stderr)
    emit(kn, as_json, html)
