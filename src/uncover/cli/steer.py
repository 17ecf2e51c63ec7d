"""``uncover steer``: steered and unsteered generations side by side (ActAdd, CAA, a saved vector)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model
from uncover.core.errors import UncoverError
from uncover.core.results import Result

METHODS = ("actadd", "caa", "ablate")


@dataclass
class SteerResult(Result):
    """Continuations of each prompt with and without steering.

    Attributes:
        method: how the model was steered; layers: where.
        prompts, plain, steered: one entry per prompt.
    """

    method: str
    layers: list[int]
    prompts: list[str]
    plain: list[str]
    steered: list[str]

    @property
    def title(self) -> str:
        return f"steering with {self.method} at layer(s) {self.layers}"

    def summary(self) -> str:
        lines = [self.title]
        for p, a, b in zip(self.prompts, self.plain, self.steered):
            lines += [f"prompt:    {p!r}", f"  plain:   {a!r}", f"  steered: {b!r}"]
        return "\n".join(lines)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"prompt": self.prompts, "unsteered": self.plain, "steered": self.steered})

    def plot(self):
        import plotly.graph_objects as go

        fig = go.Figure(go.Table(header={"values": ["prompt", "unsteered", "steered"]},
                                 cells={"values": [self.prompts, self.plain, self.steered], "align": "left"}))
        fig.update_layout(title=self.title)
        return fig


def steer(
    prompts: list[str] = typer.Argument(..., help="Prompts to continue"),
    method: str = typer.Option("actadd", "--method", help="actadd (one pair), caa (built-in pairs) or ablate"),
    positive: str = typer.Option("Love", "--positive", help="ActAdd: the positive prompt"),
    negative: str = typer.Option("Hate", "--negative", help="ActAdd: the negative prompt"),
    pairs: str = typer.Option("sentiment", "--pairs", help="CAA/ablate: sentiment, honesty, truth or a pairs file"),
    layer: int = typer.Option(6, "--layer", "-l", help="Layer to steer at"),
    scale: float = typer.Option(5.0, "--scale", "-s", help="Coefficient / multiplier"),
    vector: Path | None = typer.Option(None, "--vector", help="Use a saved vector (.safetensors or .gguf) with CAA"),
    save: Path | None = typer.Option(None, "--save", help="Save the CAA vector (.safetensors or .gguf)"),
    max_new_tokens: int = typer.Option(20, "--max-new-tokens", "-n", help="Tokens to generate"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Generate with and without steering; the model is restored after the call."""
    from uncover.cli.probe import _pairs
    from uncover.steering.methods import CAA, DirectionalAblation, actadd, generate, mean_difference
    from uncover.steering.vectors import SteeringVector

    if method not in METHODS:
        raise UncoverError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    m = load_model(model)
    if not 0 <= layer < m.cfg.n_layers:
        raise UncoverError(f"--layer {layer} out of range; this model has layers 0..{m.cfg.n_layers - 1}")
    if vector is not None:
        vec = SteeringVector.load(vector).check(m)
        st = CAA(vec, scale)
        layers = vec.layers
    elif method == "actadd":
        st, layers = actadd(m, positive, negative, layer=layer, coeff=scale), [layer]
    else:
        ps = _pairs(m, pairs).check()
        vec = mean_difference(m, ps.positive, ps.negative, [layer])
        st = CAA(vec, scale) if method == "caa" else DirectionalAblation(vec.vectors[layer])
        layers = [layer]
        if save is not None:
            vec.to_gguf(save) if save.suffix.lower() == ".gguf" else vec.save(save)
            print(f"uncover: wrote {save.resolve()}", file=sys.stderr)
    plain = generate(m, prompts, None, max_new_tokens)
    steered = generate(m, prompts, st, max_new_tokens)
    emit(SteerResult(method if vector is None else f"vector {vector.name}", layers, list(prompts), plain, steered),
         as_json, html)
