"""Knowledge neurons: integrated-gradients attribution of a fact to MLP neurons.

Dai et al. 2022, "Knowledge Neurons in Pretrained Transformers". For a prompt whose next
token is the fact's object, the attribution of neuron ``i`` of layer ``l`` is the
integrated gradient of the object's probability along the path that scales the neuron
activations of that layer at the last position from 0 to their value ``a``:
``attr_i = a_i * mean_k dP(alpha_k a) / da_i`` (midpoint Riemann sum, ``alpha_k = (k + 1/2) / m``).
By completeness the attributions of one layer sum to ``P(a) - P(0)``.
All ``m`` steps of several layers run as one staged forward/backward (the idea of
:func:`uncover.hooks.replay.run_staged`): the ``m`` rows of layer ``l`` join the batch at
block ``l`` as copies of the clean residual there (nothing below ``l`` changes), so they only
cost blocks ``l ..``; each row group scales only its own layer, and the blocks above compute
from the changed stream. The weights are frozen during the pass, so the backward computes
activation gradients only. A unit test compares with a naive loop of one forward/backward per
step and layer.
Neurons above ``threshold * max`` attribution of a prompt are kept; the knowledge
neurons are those kept in at least a fraction ``share`` of the paraphrase prompts.
Suppressing them (activation 0) lowers the fact's probability, amplifying (x2) raises it;
:func:`uncover.editing.kn.kn_edit` rewrites their value vectors to edit the fact.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name, neuron_label
from uncover.core.results import Result
from uncover.hooks.tokens import Batch
from uncover.neurons.ablation import Neuron, last_logits, set_neurons

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel


def ig_attributions(model: HookedModel, prompt: str | torch.Tensor, target: int, layers: Sequence[int],
                    steps: int = 20, layers_per_pass: int = 4) -> tuple[torch.Tensor, float]:
    """IG attributions ``[len(layers), d_mlp]`` of ``P(target)`` at the last position, and ``P``.

    Layers are processed ``layers_per_pass`` at a time in one staged forward/backward (see the
    module docstring); the result does not depend on ``layers_per_pass``.

    >>> attr, p = ig_attributions(model, "The capital of France is", 7042, [10, 20])
    >>> attr.shape
    torch.Size([2, 1536])
    """
    from uncover.hooks.decode import decode_resid
    from uncover.hooks.replay import block_kwargs, capture_calls, set_state

    if steps < 1 or layers_per_pass < 1:
        raise UncoverError(f"steps and layers_per_pass must be >= 1, got {steps} and {layers_per_pass}")
    layers = [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < model.cfg.n_layers]
    if bad:
        raise UncoverError(f"layer(s) {bad} out of range; valid: 0..{model.cfg.n_layers - 1}")
    full = model.tokenize(prompt)
    batch = Batch(full.input_ids[:1], full.attention_mask[:1])
    names = [act_name("resid_pre", x) for x in layers] + [act_name("post", x) for x in layers]
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch, names=names)
        _, calls = capture_calls(model, batch)
    prob = float(logits[0, -1].float().softmax(-1)[target])
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    out: dict[int, torch.Tensor] = {}
    order = sorted(set(layers))
    frozen = [p for p in model.model.parameters() if p.requires_grad]
    try:
        for p in frozen:  # gradients only flow to the scaled activations: no weight-gradient bookkeeping
            p.requires_grad_(False)
        for c in range(0, len(order), layers_per_pass):
            chunk = order[c:c + layers_per_pass]
            acts = {x: cache[act_name("post", x)][0, -1].float() for x in chunk}  # [d_mlp]
            xs = {x: (alphas.to(a.device)[:, None] * a).requires_grad_(True) for x, a in acts.items()}  # [steps, d_mlp]

            def scale(x: torch.Tensor) -> Any:
                def fn(v: torch.Tensor, hp: Any) -> torch.Tensor:
                    v = v.clone()
                    v[-steps:, -1] = x.to(v.dtype)  # the rows that joined the batch at this layer
                    return v

                return fn

            with torch.enable_grad(), model.hooks([(act_name("post", x), scale(xs[x])) for x in chunk]):
                h: torch.Tensor | None = None
                for i in range(chunk[0], model.cfg.n_layers):
                    if i in xs:  # `steps` copies of the clean residual join the batch at their layer
                        new = cache[act_name("resid_pre", i)].expand(steps, -1, -1)
                        h = new if h is None else torch.cat([h, new])
                    set_state(model, calls, h)
                    o = model.adapter.block(i)(h, *calls.args[i], **block_kwargs(calls, i, h.shape[0]))  # Bloom
                    h = o[0] if isinstance(o, tuple) else o
                p = decode_resid(model, h[:, -1]).float().softmax(-1)[:, target]  # [rows]
                grads = torch.autograd.grad(p.sum(), [xs[x] for x in chunk])
            for x, g in zip(chunk, grads):
                out[x] = (acts[x] * g.float().mean(0)).detach().cpu()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return torch.stack([out[x] for x in layers]), prob


@dataclass
class KnowledgeNeurons(Result):
    """Knowledge neurons of one fact.

    Attributes:
        prompts: the paraphrase prompts.
        target: the object token (string) and ``target_id`` its id.
        layers: the layers attributed.
        attributions: ``[n_prompts, n_layers, d_mlp]`` IG attributions.
        probs: ``[n_prompts]`` probability of the target.
        neurons: the knowledge neurons ``(layer, index)``, most shared and strongest first.
        counts: in how many prompts each neuron passed the threshold.
        threshold, share: the filter parameters.
        effect: the effect of suppressing / amplifying them (:func:`knowledge_effect`), when measured.
    """

    prompts: list[str]
    target: str
    target_id: int
    layers: list[int]
    attributions: torch.Tensor
    probs: torch.Tensor
    neurons: list[Neuron]
    counts: list[int]
    threshold: float
    share: float
    effect: KnowledgeEffect | None = None

    @property
    def title(self) -> str:
        return f"Knowledge neurons for {self.target!r} ({len(self.prompts)} prompts)"

    def summary(self) -> str:
        shown = ", ".join(f"{neuron_label(a, b)} ({c}/{len(self.prompts)})"
                          for (a, b), c in zip(self.neurons[:12], self.counts))
        return (f"{len(self.neurons)} knowledge neuron(s) for {self.target!r} (attribution > {self.threshold} x max in "
                f">= {self.share:.0%} of prompts; mean P = {float(self.probs.mean()):.3f}): {shown}")

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        li = {layer: j for j, layer in enumerate(self.layers)}
        return pd.DataFrame([{"layer": a, "neuron": b, "prompts": c,
                              "mean_attribution": float(self.attributions[:, li[a], b].mean())}
                             for (a, b), c in zip(self.neurons, self.counts)])

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        per_layer = self.attributions.clamp(min=0).sum(-1).mean(0)
        fig = go.Figure(go.Bar(x=self.layers, y=per_layer.tolist(), name="positive attribution"))
        fig.update_layout(title=self.summary()[:110], xaxis_title="layer",
                          yaxis_title="sum of positive IG attribution (mean over prompts)")
        return fig

    def html_sections(self) -> list[Any]:
        """The neurons' section, and their :attr:`effect`'s when it was measured."""
        return super().html_sections() + (self.effect.html_sections() if self.effect is not None else [])


def knowledge_neurons(model: HookedModel, prompts: Sequence[str], target: str | int,
                      layers: Sequence[int] | None = None, steps: int = 20, threshold: float = 0.2,
                      share: float = 0.5, layers_per_pass: int = 4) -> KnowledgeNeurons:
    """Knowledge neurons of the fact ``prompts -> target`` (Dai et al. 2022).

    ``prompts``: paraphrases whose next token should be ``target`` (a one-token string or
    id). ``layers``: default all. A neuron is kept for a prompt when its attribution exceeds
    ``threshold`` times that prompt's largest, and is a knowledge neuron when kept in at
    least ``share`` of the prompts.

    >>> kn = knowledge_neurons(model, ["The capital of France is", "France's capital city is"], " Paris",
    ...                        layers=[20, 22], steps=5)
    >>> len(kn.neurons) > 0
    True
    """
    if not prompts:
        raise UncoverError("no prompts given")
    if not 0 < threshold <= 1 or not 0 < share <= 1:
        raise UncoverError(f"threshold and share must be in (0, 1], got {threshold}, {share}")
    tid = target if isinstance(target, int) else model.to_single_token(target)
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < model.cfg.n_layers]
    if bad:
        raise UncoverError(f"layer(s) {bad} out of range; valid: 0..{model.cfg.n_layers - 1}")
    attrs, probs = [], []
    for p in prompts:
        a, pr = ig_attributions(model, p, tid, layers, steps, layers_per_pass)
        attrs.append(a)
        probs.append(pr)
    att = torch.stack(attrs)  # [n_prompts, n_layers, d_mlp]
    kept = att > threshold * att.flatten(1).max(1).values.clamp(min=1e-12)[:, None, None]
    count = kept.sum(0)
    need = max(1, -(-share * len(prompts) // 1))
    sel = (count >= need).nonzero().tolist()
    mean_att = att.mean(0)
    sel.sort(key=lambda jn: (-int(count[jn[0], jn[1]]), -float(mean_att[jn[0], jn[1]])))
    neurons = [(layers[j], n) for j, n in sel]
    counts = [int(count[j, n]) for j, n in sel]
    tstr = target if isinstance(target, str) else model._strs([tid])[0]
    return KnowledgeNeurons(list(prompts), tstr, tid, layers, att, torch.tensor(probs), neurons, counts,
                            threshold, share)


@dataclass
class KnowledgeEffect(Result):
    """Probability of the fact with its knowledge neurons suppressed, amplified, or random ones suppressed.

    Attributes:
        prompts, target: as in :class:`KnowledgeNeurons`.
        base, suppressed, amplified, random: ``[n_prompts]`` probabilities of the target.
        n_neurons: how many neurons were changed (and how many random ones per draw).
    """

    prompts: list[str]
    target: str
    base: torch.Tensor
    suppressed: torch.Tensor
    amplified: torch.Tensor
    random: torch.Tensor
    n_neurons: int

    @property
    def title(self) -> str:
        return f"Suppressing and amplifying {self.n_neurons} knowledge neuron(s) of {self.target!r}"

    def change(self, which: str) -> float:
        """Relative change of the *mean* probability: ``suppressed``, ``amplified`` or ``random``.

        ``mean(p_which) / mean(p_base) − 1``. (A mean of per-prompt relative changes would be
        dominated by the prompts whose base probability is tiny: 1e-4 → 1e-3 is "+900%".)

        >>> e = KnowledgeEffect(["a", "b"], " x", torch.tensor([0.5, 0.001]), torch.tensor([0.25, 0.001]),
        ...                     torch.tensor([0.5, 0.01]), torch.tensor([0.5, 0.001]), 1)
        >>> round(e.change("amplified"), 3), round(e.change("suppressed"), 3)
        (0.018, -0.499)
        """
        v = getattr(self, which)
        return float(v.double().mean() / self.base.double().mean() - 1)

    def logprob_change(self, which: str) -> float:
        """Mean change of the log-probability (nats) over prompts: ``mean(log p_which − log p_base)``.

        >>> e = KnowledgeEffect(["a"], " x", torch.tensor([0.5]), torch.tensor([0.25]), torch.tensor([0.5]),
        ...                     torch.tensor([0.5]), 1)
        >>> round(e.logprob_change("suppressed"), 3)
        -0.693
        """
        v = getattr(self, which)
        tiny = torch.finfo(torch.float64).tiny
        return float((v.double().clamp_min(tiny).log() - self.base.double().clamp_min(tiny).log()).mean())

    def summary(self) -> str:
        parts = [f"{label} {self.change(w):+.1%} ({self.logprob_change(w):+.2f} nats)" for label, w in
                 (("suppressed", "suppressed"), ("amplified x2", "amplified"),
                  (f"{self.n_neurons} random neurons suppressed", "random"))]
        return f"P({self.target!r}) mean {float(self.base.mean()):.4f}; change of the mean: " + ", ".join(parts)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame({"prompt": self.prompts, "base": self.base.tolist(), "suppressed":
                             self.suppressed.tolist(), "amplified": self.amplified.tolist(),
                             "random_suppressed": self.random.tolist()})

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        fig = go.Figure()
        for name in ("base", "suppressed", "amplified", "random"):
            fig.add_trace(go.Bar(name=name, x=list(range(len(self.prompts))), y=getattr(self, name).tolist()))
        fig.update_layout(barmode="group", title=self.summary()[:120], xaxis_title="prompt",
                          yaxis_title=f"P({self.target!r})")
        return fig


def random_neurons(model: HookedModel, like: Sequence[Neuron], seed: int = 0) -> list[Neuron]:
    """As many random neurons as ``like``, in the same layers, none of them in ``like``.

    >>> len(random_neurons(model, [(3, 1), (5, 2)]))
    2
    """
    rng = random.Random(seed)
    taken = set(like)
    out: list[Neuron] = []
    for layer, _ in like:
        while True:
            n = (layer, rng.randrange(model.cfg.d_mlp))
            if n not in taken:
                taken.add(n)
                out.append(n)
                break
    return out


def knowledge_effect(model: HookedModel, kn: KnowledgeNeurons, prompts: Sequence[str] | None = None,
                     factor: float = 2.0, n_random: int = 3, seed: int = 0, last_only: bool = True) -> KnowledgeEffect:
    """Suppress (0) and amplify (x ``factor``) the knowledge neurons; suppress random ones as a control.

    ``last_only``: intervene at the last position only (where the attribution was measured).
    ``random`` is the mean over ``n_random`` draws of random neurons in the same layers.

    >>> kn = knowledge_neurons(model, ["The capital of France is"], " Paris", layers=[20, 22], steps=5)
    >>> eff = knowledge_effect(model, kn)
    >>> eff.change("suppressed") < eff.change("random")
    True
    """
    if not kn.neurons:
        raise UncoverError("no knowledge neurons to intervene on; lower threshold or share")
    prompts = list(kn.prompts if prompts is None else prompts)

    def probs(neurons: Sequence[Neuron], mode: str = "zero") -> torch.Tensor:
        with set_neurons(model, neurons, mode, factor, last_only=last_only):
            return torch.stack([last_logits(model, p).softmax(-1)[0, kn.target_id] for p in prompts])

    base = probs([])
    sup = probs(kn.neurons)
    amp = probs(kn.neurons, "scale")
    rnd = torch.stack([probs(random_neurons(model, kn.neurons, seed + i)) for i in range(n_random)]).mean(0)
    return KnowledgeEffect(prompts, kn.target, base, sup, amp, rnd, len(kn.neurons))
