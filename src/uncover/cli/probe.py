"""``uncover probe``, ``uncover ccs`` and ``uncover read``: probing, CCS and RepE reading vectors per layer."""

from __future__ import annotations

from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model
from uncover.core.errors import UncoverError

DATA_HELP = "truth, sentiment, honesty, truth-pairs, or a CSV/JSONL file"


def _layers(spec: str | None, n: int) -> list[int]:
    """``"0,4,8"``, ``"4:20:2"`` or ``None`` (all) -> layer list; out of range is an error."""
    if spec is None:
        return list(range(n))
    try:
        if ":" in spec:
            parts = [int(x) if x else None for x in spec.split(":")]
            out = list(range(n))[slice(*parts)]
        else:
            out = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UncoverError(f"--layers {spec!r}: give comma-separated ints (0,4,8) or a range start:stop:step") from None
    bad = [la for la in out if not 0 <= la < n]
    if bad or not out:
        raise UncoverError(f"--layers {spec!r}: layer(s) {bad or 'none'} out of range; "
                           f"this model has layers 0..{n - 1}")
    return out


def _labelled(m, data: str):
    from uncover.data import labelled as L

    if data == "truth":
        return L.truth_statements(m)
    if data == "sentiment":
        return L.sentiment_texts()
    if data in ("honesty", "truth-pairs"):
        return (L.honesty_pairs(m) if data == "honesty" else L.truth_pairs(m)).as_labelled()
    if Path(data).suffix.lower() in (".csv", ".jsonl", ".json"):
        return L.from_file(data)
    raise UncoverError(f"unknown dataset {data!r}; valid: {DATA_HELP}")


def _pairs(m, data: str):
    from uncover.data import labelled as L

    if data in ("truth", "truth-pairs"):
        return L.truth_pairs(m)
    if data == "sentiment":
        return L.sentiment_pairs()
    if data == "honesty":
        return L.honesty_pairs(m)
    if Path(data).suffix.lower() in (".csv", ".jsonl", ".json"):
        return L.pairs_from_file(data)
    raise UncoverError(f"unknown dataset {data!r}; valid: {DATA_HELP} (with positive,negative[,label] columns)")


def probe(
    data: str = typer.Option("truth", "--data", "-d", help=DATA_HELP),
    layers: str | None = typer.Option(None, "--layers", "-l", help="Layers: 0,4,8 or start:stop:step (default all)"),
    kind: str = typer.Option("logistic", "--kind", help="logistic or mlp"),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds"),
    where: str = typer.Option("last", "--where", help="last or mean (position reduction)"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Probe accuracy by layer, with a control task and selectivity (Hewitt & Liang 2019)."""
    from uncover.data.activations import collect, resid_hooks
    from uncover.probing.layers import probe_layers

    m = load_model(model)
    ds = _labelled(m, data).check()
    hooks = resid_hooks(m, _layers(layers, m.cfg.n_layers))
    acts = collect(m, ds, hooks, where=where)
    emit(probe_layers(acts, kind=kind, folds=folds, dataset=ds.name), as_json, html)


def ccs(
    data: str = typer.Option("truth-pairs", "--data", "-d", help=DATA_HELP + " (pairs with labels)"),
    layers: str | None = typer.Option(None, "--layers", "-l", help="Layers (default every third)"),
    restarts: int = typer.Option(10, "--restarts", help="Random restarts"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Contrast-consistent search (Burns et al. 2022) vs a supervised probe, on held-out pairs."""
    from uncover.data.activations import collect, resid_hooks
    from uncover.probing.ccs import ccs_layers

    m = load_model(model)
    pairs = _pairs(m, data).check()
    if pairs.labels is None:
        raise UncoverError(f"{pairs.name}: CCS needs labels to report accuracy "
                           "(a 'label' column: 1 if the positive text is true)")
    hooks = resid_hooks(m, _layers(layers or f"0:{m.cfg.n_layers}:3", m.cfg.n_layers))
    pos, neg = collect(m, pairs.positive, hooks), collect(m, pairs.negative, hooks)
    emit(ccs_layers(pos, neg, pairs.labels, groups=pairs.groups, restarts=restarts, dataset=pairs.name), as_json, html)


def read(
    data: str = typer.Option("honesty", "--data", "-d", help=DATA_HELP + " (contrast pairs)"),
    layers: str | None = typer.Option(None, "--layers", "-l", help="Layers (default all)"),
    save: Path | None = typer.Option(None, "--save", help="Save the LAT reading vectors (.safetensors or .gguf)"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """RepE reading vectors (LAT and difference-in-means) and their held-out reading accuracy per layer."""
    import sys

    from uncover.data.activations import collect, resid_hooks
    from uncover.steering.reading import reading_vectors

    m = load_model(model)
    pairs = _pairs(m, data).check()
    hooks = resid_hooks(m, _layers(layers, m.cfg.n_layers), "hook_resid_pre")
    pos, neg = collect(m, pairs.positive, hooks), collect(m, pairs.negative, hooks)
    result = reading_vectors(pos, neg, groups=pairs.groups, dataset=pairs.name)
    if save is not None:
        vec = result.vector("pca")
        vec.model = m.name
        vec.to_gguf(save) if save.suffix.lower() == ".gguf" else vec.save(save)
        print(f"uncover: wrote {save.resolve()}", file=sys.stderr)
    emit(result, as_json, html)
