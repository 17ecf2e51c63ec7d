"""Neuron interventions (zero, mean, scale) and their effect on a metric.

The causal check behind neuron-level claims: set chosen MLP neurons
(``blocks.{l}.mlp.hook_post[..., i]``) to zero, to their mean over reference text, or
multiply them by a factor (Dai et al. 2022 suppress and amplify knowledge neurons this
way), and measure a metric of the last-position logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.results import Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel, Inputs

MODES = ("zero", "mean", "scale")
Neuron = tuple[int, int]


def neuron_hooks(neurons: Sequence[Neuron], mode: str = "zero", factor: float = 2.0,
                 means: dict[Neuron, float] | None = None, last_only: bool = False) -> list[tuple[str, Any]]:
    """Hooks setting neurons ``(layer, index)`` to zero / their mean, or scaling them by ``factor``.

    ``last_only``: change only the last position (prompts without right padding).

    >>> [h for h, _ in neuron_hooks([(3, 5), (3, 7), (1, 0)])]
    ['blocks.1.mlp.hook_post', 'blocks.3.mlp.hook_post']
    """
    if mode not in MODES:
        raise UncoverError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "mean" and means is None:
        raise UncoverError("mode 'mean' needs means (see neuron_means)")
    by_layer: dict[int, list[int]] = {}
    for layer, i in neurons:
        by_layer.setdefault(int(layer), []).append(int(i))

    def make(layer: int, idx: list[int]) -> Any:
        cols = torch.tensor(idx)
        mean_vals = torch.tensor([means[(layer, i)] for i in idx]) if mode == "mean" else None

        def fn(v: torch.Tensor, hp: Any) -> torch.Tensor:
            v = v.clone()
            pos = slice(-1, None) if last_only else slice(None)
            sel = v[:, pos][..., cols.to(v.device)]
            if mode == "zero":
                new = torch.zeros_like(sel)
            elif mode == "scale":
                new = sel * factor
            else:
                new = mean_vals.to(v.device, v.dtype).expand_as(sel)
            v[:, pos, cols.to(v.device)] = new
            return v

        return fn

    return [(f"blocks.{layer}.mlp.hook_post", make(layer, idx)) for layer, idx in sorted(by_layer.items())]


def neuron_means(model: HookedModel, neurons: Sequence[Neuron], inputs: Inputs) -> dict[Neuron, float]:
    """Mean activation of each neuron over the real tokens of ``inputs``.

    >>> neuron_means(model, [(3, 5)], ["Some text."])  # doctest: +SKIP
    {(3, 5): 0.0123}
    """
    layers = sorted({int(layer) for layer, _ in neurons})
    _, cache = model.run_with_cache(inputs, [f"blocks.{layer}.mlp.hook_post" for layer in layers])
    mask = cache.batch.attention_mask.bool() if hasattr(cache, "batch") else None
    out = {}
    for layer, i in neurons:
        v = cache[f"blocks.{layer}.mlp.hook_post"][..., i].float()
        out[(int(layer), int(i))] = float(v[mask].mean() if mask is not None else v.mean())
    return out


def last_logits(model: HookedModel, inputs: Inputs, hooks: Sequence[tuple[str, Any]] = ()) -> torch.Tensor:
    """``[batch, d_vocab]`` logits at each prompt's last real token, with ``hooks`` attached.

    >>> last_logits(model, ["The capital of France is"]).shape  # doctest: +SKIP
    torch.Size([1, 49152])
    """
    batch = model.tokenize(inputs)
    with torch.no_grad(), model.hooks(list(hooks)):
        logits = model(batch)
    last = batch.attention_mask.sum(1) - 1
    return logits[torch.arange(len(last)), last].float()


@dataclass
class NeuronAblation(Result):
    """Effect of ablating neurons on a metric.

    Attributes:
        neurons: the ``(layer, index)`` ablated.
        mode: ``zero``, ``mean`` or ``scale``.
        base: ``[batch]`` metric without intervention.
        joint: ``[batch]`` metric with all neurons ablated together.
        single: ``[n_neurons]`` mean change of the metric when each neuron alone is ablated
            (empty when not computed).
    """

    neurons: list[Neuron]
    mode: str
    base: torch.Tensor
    joint: torch.Tensor
    single: torch.Tensor

    @property
    def title(self) -> str:
        return f"{self.mode} ablation of {len(self.neurons)} neuron(s)"

    def summary(self) -> str:
        s = (f"metric {float(self.base.mean()):.4g} -> {float(self.joint.mean()):.4g} "
             f"(change {float((self.joint - self.base).mean()):+.4g}) with {len(self.neurons)} neurons {self.mode}")
        if len(self.single):
            order = self.single.abs().argsort(descending=True)[:5].tolist()
            s += "\nlargest single effects: " + ", ".join(
                f"L{self.neurons[i][0]}N{self.neurons[i][1]} {float(self.single[i]):+.4g}" for i in order)
        return s

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame({"layer": [n[0] for n in self.neurons], "neuron": [n[1] for n in self.neurons],
                             "single_effect": self.single.tolist() if len(self.single) else [None] * len(self.neurons)})

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        labels = [f"L{a}N{b}" for a, b in self.neurons]
        fig = go.Figure(go.Bar(x=labels, y=self.single.tolist() if len(self.single) else [0] * len(labels)))
        fig.update_layout(title=self.summary().splitlines()[0], yaxis_title="metric change (single neuron)")
        return fig


def ablate_neurons(model: HookedModel, inputs: Inputs, neurons: Sequence[Neuron],
                   metric: Callable[[torch.Tensor], torch.Tensor], mode: str = "zero",
                   reference: Inputs | None = None, factor: float = 0.0, individually: bool = True) -> NeuronAblation:
    """Ablate ``neurons`` (``(layer, index)``) together and one at a time; measure ``metric``.

    ``metric`` maps last-token logits ``[batch, d_vocab]`` to ``[batch]`` (see
    :mod:`uncover.patching.metrics`). ``mode="mean"`` uses each neuron's mean over
    ``reference`` (default: ``inputs``); ``mode="scale"`` multiplies by ``factor``.

    >>> from uncover.patching.metrics import prob
    >>> r = ablate_neurons(model, ["The capital of France is"], [(20, 5)], prob(7042))  # doctest: +SKIP
    >>> r.joint.shape  # doctest: +SKIP
    torch.Size([1])
    """
    neurons = [(int(a), int(b)) for a, b in neurons]
    if not neurons:
        raise UncoverError("no neurons given")
    for layer, i in neurons:
        if not 0 <= layer < model.cfg.n_layers or not 0 <= i < model.cfg.d_mlp:
            raise UncoverError(f"neuron ({layer}, {i}) out of range; layers 0..{model.cfg.n_layers - 1}, "
                               f"neurons 0..{model.cfg.d_mlp - 1}")
    means = neuron_means(model, neurons, reference if reference is not None else inputs) if mode == "mean" else None
    base = metric(last_logits(model, inputs))
    joint = metric(last_logits(model, inputs, neuron_hooks(neurons, mode, factor, means)))
    single = torch.tensor([float((metric(last_logits(model, inputs, neuron_hooks([n], mode, factor, means)))
                                  - base).mean()) for n in neurons]) if individually else torch.zeros(0)
    return NeuronAblation(neurons, mode, base, joint, single)
