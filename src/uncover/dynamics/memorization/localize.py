"""Localising memorization: gradient attribution to MLP neurons and attention heads for
memorized vs non-memorized sequences, checked by ablation (in the spirit of Stoehr et al. 2024,
"Localizing paragraph memorization in language models").

Attribution of a component to a sequence: ``|activation × ∂ objective / ∂ activation|`` summed over
positions and averaged over the sequences of a set, where the objective is the summed log-odds of
the true suffix tokens (``z_target - logsumexp(other logits)``: unlike the loss, its gradient does
not vanish on confidently memorized text). Each set's attributions are normalised to sum to one;
the neurons whose share is much larger for memorized than for non-memorized text are the
candidates, and zeroing the top ``k`` of them should cut extraction more than zeroing ``k``
random neurons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name
from uncover.core.results import Result
from uncover.dynamics.memorization.metrics import extractable, token_losses
from uncover.hooks.hooked import HookedModel
from uncover.hooks.interventions import Zero


def attribution(hm: HookedModel, tokens: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean attribution of each neuron ``[n_layers, d_mlp]`` and head ``[n_layers, n_heads]`` to the
    log-odds of the suffix tokens (``k..``) of ``tokens`` ``[n, seq_len]``.

    >>> neurons, heads = attribution(run.hooked, memorized, k=32)  # doctest: +SKIP
    >>> neurons.shape, heads.shape  # doctest: +SKIP
    (torch.Size([2, 512]), torch.Size([2, 4]))
    """
    c = hm.cfg
    acts: dict[str, torch.Tensor] = {}

    # A hand-written hook: it hands the forward a tensor that retains its gradient, which is a
    # recording for the backward pass rather than a change that an intervention could express.
    def keep(v: torch.Tensor, hook: Any) -> torch.Tensor:
        out = v * 1.0  # a new tensor that the forward really uses (a per-head view may not be)
        out.retain_grad()
        acts[hook.name] = out
        return out

    names = [act_name("post", layer) for layer in range(c.n_layers)]
    names += [act_name("z", layer) for layer in range(c.n_layers)]
    with torch.enable_grad(), hm.hooks([(n, keep) for n in names]):
        logits = hm(tokens)[:, k - 1: -1].float()  # predictions of tokens k..
        log_odds(logits, tokens[:, k:]).sum().backward()
    neurons = torch.stack([(acts[act_name("post", i)] * acts[act_name("post", i)].grad)
                           .abs().sum(1).mean(0) for i in range(c.n_layers)])
    heads = torch.stack([(acts[act_name("z", i)] * acts[act_name("z", i)].grad)
                         .sum(-1).abs().sum(1).mean(0) for i in range(c.n_layers)])
    hm.model.zero_grad(set_to_none=True)
    return neurons.detach(), heads.detach()


def log_odds(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``logit[target] - logsumexp(other logits)`` per position: ``[...]`` from ``[..., vocab]``.

    >>> round(float(log_odds(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))[0]), 4)
    1.3069
    """
    t = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, target.unsqueeze(-1), float("-inf"))
    return t - others.logsumexp(-1)


def ablate_neurons(neurons: list[tuple[int, int]]) -> list[Zero]:
    """:class:`Zero` interventions on the given ``(layer, neuron)`` pairs, one per layer (for ``model.intervene``).

    >>> [(iv.hook, iv.units) for iv in ablate_neurons([(1, 4), (0, 3), (1, 9)])]
    [('blocks.1.mlp.hook_post', (4, 9)), ('blocks.0.mlp.hook_post', (3,))]
    """
    by_layer: dict[int, list[int]] = {}
    for layer, n in neurons:
        by_layer.setdefault(layer, []).append(n)
    return [Zero(act_name("post", layer), units=idx) for layer, idx in by_layer.items()]


@dataclass
class LocalizationResult(Result):
    """Per-layer attribution for memorized vs non-memorized sequences and the ablation check."""

    layers: pd.DataFrame
    """Per layer: ``mlp_mem mlp_nonmem attn_mem attn_nonmem`` (summed attributions)."""
    top_neurons: list[tuple[int, int]]
    """The ``(layer, neuron)`` pairs with the largest memorized-minus-non-memorized attribution."""
    ablation: pd.DataFrame
    """Rows ``ablation`` (none / top / random), ``k``, ``extractable`` (fraction of the memorized set
    still extractable), ``nonmem_loss`` (mean loss on the non-memorized set), ``draws``."""

    @property
    def title(self) -> str:
        return "Localising memorization (gradient attribution + ablation)"

    def summary(self) -> str:
        a = self.ablation.set_index("ablation")
        lines = [self.title]
        for r in self.layers.itertuples():
            lines.append(f"  layer {r.layer}: MLP attribution memorized {r.mlp_mem:.3g} vs non-memorized "
                         f"{r.mlp_nonmem:.3g}; attention {r.attn_mem:.3g} vs {r.attn_nonmem:.3g}")
        for name in a.index:
            lines.append(f"  ablate {name:7s} (k={int(a.loc[name, 'k'])}): still extractable "
                         f"{a.loc[name, 'extractable']:.2f}, non-memorized loss {a.loc[name, 'nonmem_loss']:.3f}")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        return self.ablation

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(layers=self.layers.to_dict("records"), top_neurons=[list(t) for t in self.top_neurons])
        return d

    def plot(self) -> go.Figure:
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("attribution per layer", "extraction after ablation"))
        lay = self.layers
        for col, name in (("mlp_mem", "MLP, memorized"), ("mlp_nonmem", "MLP, non-memorized"),
                          ("attn_mem", "attention, memorized"), ("attn_nonmem", "attention, non-memorized")):
            fig.add_trace(go.Bar(x=lay.layer, y=lay[col], name=name), 1, 1)
        a = self.ablation
        fig.add_trace(go.Bar(x=a.ablation, y=a.extractable, name="still extractable", showlegend=False), 1, 2)
        fig.update_layout(title=self.title, barmode="group", height=450)
        return fig


def localize(hm: HookedModel, memorized: torch.Tensor, other: torch.Tensor, k_prefix: int, k: int = 64,
             draws: int = 5, seed: int = 0) -> LocalizationResult:
    """Attribute, pick the top ``k`` neurons (memorized minus other), and compare ablating them
    with ablating ``k`` random neurons (``draws`` times) on extraction of ``memorized``.

    >>> r = localize(run.hooked, memorized, other, k_prefix=32, k=64)  # doctest: +SKIP
    >>> r.ablation.set_index("ablation").loc["top", "extractable"] < 0.5  # doctest: +SKIP
    True
    """
    if not len(memorized) or not len(other):
        raise UncoverError(f"need memorized and non-memorized sequences (got {len(memorized)} and {len(other)}); "
                           "train longer or with more duplicates")
    c = hm.cfg
    n_mem, h_mem = attribution(hm, memorized, k_prefix)
    n_oth, h_oth = attribution(hm, other, k_prefix)
    layers = pd.DataFrame({"layer": list(range(c.n_layers)), "mlp_mem": n_mem.sum(1).tolist(),
                           "mlp_nonmem": n_oth.sum(1).tolist(), "attn_mem": h_mem.sum(1).tolist(),
                           "attn_nonmem": h_oth.sum(1).tolist()})
    contrast = (n_mem / n_mem.sum() - n_oth / n_oth.sum()).flatten()
    top = [(int(i) // c.d_mlp, int(i) % c.d_mlp) for i in contrast.argsort(descending=True)[:k]]
    model = hm.model

    def run(neurons: list[tuple[int, int]]) -> tuple[float, float]:
        with hm.intervene(ablate_neurons(neurons)):
            ext = float(extractable(model, memorized, k_prefix).float().mean())
            loss = float(token_losses(model, other).mean())
        return ext, loss

    rows = [{"ablation": "none", "k": 0, "draws": 1, **dict(zip(("extractable", "nonmem_loss"), run([]))),
             }, {"ablation": "top", "k": k, "draws": 1, **dict(zip(("extractable", "nonmem_loss"), run(top)))}]
    g = torch.Generator().manual_seed(seed)
    rnd = []
    for _ in range(draws):
        idx = torch.randperm(c.n_layers * c.d_mlp, generator=g)[:k].tolist()
        rnd.append(run([(i // c.d_mlp, i % c.d_mlp) for i in idx]))
    rows.append({"ablation": "random", "k": k, "draws": draws, "extractable": sum(r[0] for r in rnd) / draws,
                 "nonmem_loss": sum(r[1] for r in rnd) / draws})
    return LocalizationResult(layers, top, pd.DataFrame(rows))


def localize_run(run: Any, k: int = 64, draws: int = 5) -> LocalizationResult:
    """:func:`localize` on a :class:`~uncover.dynamics.memorization.train.MemRun`: memorized =
    tracked sequences with copies that are extractable; other = held-out corpus sequences.

    >>> print(localize_run(run, k=64).summary())  # doctest: +SKIP
    """
    hm = run.hooked
    d = run.data
    seqs = [s for s in d.tracked if s.dups > 0 and s.kind != "member"]
    x = torch.stack([s.tokens for s in seqs])
    ok = extractable(run.model, x, run.cfg.k_prefix)
    return localize(hm, x[ok], d.group("corpus", 0), run.cfg.k_prefix, k=k, draws=draws, seed=run.cfg.seed)
