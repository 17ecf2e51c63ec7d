"""Neuron interventions (zero, mean, scale) and their effect on a metric.

The causal check behind neuron-level claims: set chosen MLP neurons
(``blocks.{l}.mlp.hook_post[..., i]``) to zero, to their mean over reference text (the
:class:`~uncover.hooks.interventions.Zero` and :class:`~uncover.hooks.interventions.Mean`
interventions on the neuron axis), or multiply them by a factor (Dai et al. 2022 suppress and
amplify knowledge neurons this way), and measure a metric of the last-position logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name, neuron_label
from uncover.core.results import Result
from uncover.hooks.interventions import Intervention, Mean, Zero

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel, Inputs

MODES = ("zero", "mean", "scale")
Neuron = tuple[int, int]


def neuron_interventions(neurons: Sequence[Neuron], mode: str = "zero", means: dict[Neuron, float] | None = None,
                         last_only: bool = False) -> list[Intervention]:
    """:class:`Zero` (``mode="zero"``) or :class:`Mean` (``mode="mean"``) interventions on neurons ``(layer, index)``,
    one per layer, on the neuron axis of ``blocks.{l}.mlp.hook_post``.

    ``last_only``: change only each prompt's last real token.

    >>> ivs = neuron_interventions([(3, 5), (3, 7), (1, 0)], last_only=True)
    >>> [(iv.hook, iv.units) for iv in ivs]
    [('blocks.1.mlp.hook_post', (0,)), ('blocks.3.mlp.hook_post', (5, 7))]
    >>> ivs[0]
    Zero(hook='blocks.1.mlp.hook_post', positions=(-1,), heads=None, units=(0,))
    """
    if mode not in ("zero", "mean"):
        raise UncoverError(f"no intervention for mode {mode!r}; valid: zero, mean (scale: see set_neurons)")
    if mode == "mean" and means is None:
        raise UncoverError("mode 'mean' needs means (see neuron_means)")
    positions = (-1,) if last_only else None
    out: list[Intervention] = []
    for layer, idx in _by_layer(neurons):
        if mode == "zero":
            out.append(Zero(act_name("post", layer), positions=positions, units=idx))
        else:
            mean = torch.tensor([means[(layer, i)] for i in idx])
            out.append(Mean(act_name("post", layer), positions=positions, units=idx, mean=mean))
    return out


def _by_layer(neurons: Sequence[Neuron]) -> list[tuple[int, list[int]]]:
    by_layer: dict[int, list[int]] = {}
    for layer, i in neurons:
        by_layer.setdefault(int(layer), []).append(int(i))
    return sorted(by_layer.items())


def _scale_hooks(neurons: Sequence[Neuron], factor: float, last_only: bool) -> list[tuple[str, Any]]:
    # A hand-written hook: multiplying a value by a factor depends on the value itself, which no
    # intervention (Zero, Mean, Replace, Add, Project, Ablate) expresses.
    def make(idx: list[int]) -> Any:
        units = torch.tensor(idx)

        def fn(v: torch.Tensor, hp: Any) -> torch.Tensor:
            out, u = v.clone(), units.to(v.device)
            if not last_only:
                out[..., u] = v[..., u] * factor
                return out
            last = hp.state.columns([-1], v.device)[:, 0]  # each prompt's last real token; -1: not in this pass
            rows = (last >= 0).nonzero().flatten()[:, None]
            cols = last[rows]
            out[rows, cols, u] = v[rows, cols, u] * factor
            return out

        return fn

    return [(act_name("post", layer), make(idx)) for layer, idx in _by_layer(neurons)]


@contextlib.contextmanager
def set_neurons(model: HookedModel, neurons: Sequence[Neuron], mode: str = "zero", factor: float = 2.0,
                means: dict[Neuron, float] | None = None, last_only: bool = False) -> Iterator[HookedModel]:
    """For the ``with`` block, set neurons ``(layer, index)`` to zero / their mean (``means``), or scale them by
    ``factor``; no neurons change nothing. ``last_only``: only at each prompt's last real token.

    >>> with set_neurons(model, [(20, 5), (20, 9)], "scale", factor=2.0):
    ...     logits = last_logits(model, "The capital of France is")
    >>> logits.shape
    torch.Size([1, 49152])
    """
    if mode not in MODES:
        raise UncoverError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if not neurons:
        yield model
    elif mode == "scale":
        with model.hooks(_scale_hooks(neurons, factor, last_only)):
            yield model
    else:
        with model.intervene(neuron_interventions(neurons, mode, means, last_only)):
            yield model


def neuron_means(model: HookedModel, neurons: Sequence[Neuron], inputs: Inputs) -> dict[Neuron, float]:
    """Mean activation of each neuron over the real tokens of ``inputs``.

    >>> {n: round(v, 3) for n, v in neuron_means(model, [(3, 5)], ["Some text."]).items()}
    {(3, 5): 0.011}
    """
    layers = sorted({int(layer) for layer, _ in neurons})
    _, cache = model.run_with_cache(inputs, [act_name("post", layer) for layer in layers])
    mask = cache.batch.attention_mask.bool() if hasattr(cache, "batch") else None
    out = {}
    for layer, i in neurons:
        v = cache[act_name("post", layer)][..., i].float()
        out[(int(layer), int(i))] = float(v[mask].mean() if mask is not None else v.mean())
    return out


def last_logits(model: HookedModel, inputs: Inputs) -> torch.Tensor:
    """``[batch, d_vocab]`` logits at each prompt's last real token (float32).

    >>> last_logits(model, ["The capital of France is"]).shape
    torch.Size([1, 49152])
    """
    batch = model.tokenize(inputs)
    with torch.no_grad():
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
                f"{neuron_label(*self.neurons[i])} {float(self.single[i]):+.4g}" for i in order)
        return s

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame({"layer": [n[0] for n in self.neurons], "neuron": [n[1] for n in self.neurons],
                             "single_effect": self.single.tolist() if len(self.single) else [None] * len(self.neurons)})

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        labels = [neuron_label(a, b) for a, b in self.neurons]
        fig = go.Figure(go.Bar(x=labels, y=self.single.tolist() if len(self.single) else [0] * len(labels)))
        fig.update_layout(title=self.summary().splitlines()[0], yaxis_title="metric change (single neuron)")
        return fig


def ablate_neurons(model: HookedModel, inputs: Inputs, neurons: Sequence[Neuron],
                   metric: Callable[[torch.Tensor], torch.Tensor], mode: str = "zero",
                   reference: Inputs | None = None, factor: float = 0.0, individually: bool = True) -> NeuronAblation:
    """Ablate ``neurons`` (``(layer, index)``) together and one at a time; measure ``metric``.

    ``metric`` maps last-token logits ``[batch, d_vocab]`` to ``[batch]`` (see
    :mod:`uncover.hooks.metrics`). ``mode="mean"`` uses each neuron's mean over
    ``reference`` (default: ``inputs``); ``mode="scale"`` multiplies by ``factor``.

    >>> from uncover.hooks.metrics import prob
    >>> r = ablate_neurons(model, ["The capital of France is"], [(20, 5)], prob(7042))
    >>> r.joint.shape
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

    def measure(ns: Sequence[Neuron]) -> torch.Tensor:
        with set_neurons(model, ns, mode, factor, means):
            return metric(last_logits(model, inputs))

    base = measure([])
    joint = measure(neurons)
    single = torch.tensor([float((measure([n]) - base).mean()) for n in neurons]) if individually else torch.zeros(0)
    return NeuronAblation(neurons, mode, base, joint, single)
