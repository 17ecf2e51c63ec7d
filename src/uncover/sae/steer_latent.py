"""Steering, clamping or ablating one SAE latent, with the model's output before and after.

Feature steering as in Templeton et al. 2024 ("Scaling Monosemanticity"): the SAE is attached at its hook
with its error term (:func:`uncover.sae.attach.attach_sae`), so the model is unchanged except that the
activation moves by exactly ``(f'_i - f_i) · W_dec[i]`` at every position, where ``f_i`` is the latent's
activation and ``f'_i`` its edited value: ``0`` (``ablate``), ``f_i + scale`` (``steer``) or ``scale``
(``clamp``). :func:`steer_latent` returns the next-token distribution and a greedy generation with and without
the edit, and the latent's activation on each token of the prompt. The operation is ``sae steer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from uncover.core.errors import UncoverError
from uncover.core.results import Result

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel
    from uncover.sae.base import SAE

MODES = ("ablate", "steer", "clamp")


@dataclass
class LatentSteerResult(Result):
    """The model's output on one prompt before and after editing one SAE latent.

    Attributes:
        prompt: the prompt.
        hook: the SAE's hook.
        latent: the edited latent.
        mode: ``ablate`` (set to 0), ``steer`` (``scale`` added) or ``clamp`` (held at ``scale``).
        scale: the amount added (``steer``) or the value held (``clamp``); unused by ``ablate``.
        str_tokens: the prompt's tokens.
        activation: ``[pos]`` the latent's activation on each token, before the edit.
        ids: ``[token]`` the tokens shown: the union of the top-k next tokens before and after, by id order
            of first appearance (before's top-k first).
        tokens: their text.
        probs_before, probs_after: ``[token]`` their next-token probabilities without and with the edit.
        kl: KL(before ‖ after) of the next-token distribution, in nats.
        generation_before, generation_after: greedy continuations without and with the edit ("" without
            generation).
        max_new_tokens: the continuations' length in tokens.
    """

    prompt: str
    hook: str
    latent: int
    mode: str
    scale: float
    str_tokens: list[str]
    activation: torch.Tensor
    ids: list[int]
    tokens: list[str]
    probs_before: torch.Tensor
    probs_after: torch.Tensor
    kl: float
    generation_before: str
    generation_after: str
    max_new_tokens: int

    @property
    def title(self) -> str:
        what = {"ablate": "ablated", "steer": f"steered by {self.scale:+g}", "clamp": f"clamped at {self.scale:g}"}
        return f"SAE latent {self.latent} {what[self.mode]} ({self.hook})"

    def summary(self) -> str:
        top_b, top_a = int(self.probs_before.argmax()), int(self.probs_after.argmax())
        act = self.activation
        lines = [
            f"{self.prompt!r}: latent {self.latent} is active on {int((act > 0).sum())} of {len(act)} tokens "
            f"(max {float(act.max()):.3f} at {self.str_tokens[int(act.argmax())]!r})",
            f"next token before: {self.tokens[top_b]!r} p={float(self.probs_before[top_b]):.3f}; after: "
            f"{self.tokens[top_a]!r} p={float(self.probs_after[top_a]):.3f}; KL(before ‖ after) {self.kl:.4f} nats",
        ]
        if self.max_new_tokens:
            lines += [f"before: {self.generation_before!r}", f"after:  {self.generation_after!r}"]
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        """One row per next token shown: its probability before and after the edit, and the change."""
        return pd.DataFrame(
            {
                "token": self.tokens,
                "id": self.ids,
                "prob_before": self.probs_before.tolist(),
                "prob_after": self.probs_after.tolist(),
                "change": (self.probs_after - self.probs_before).tolist(),
            }
        )

    def plot(self) -> go.Figure:
        """The latent's activation per token, and the next-token probabilities before and after."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(
            rows=2,
            cols=1,
            subplot_titles=(f"latent {self.latent} activation per token", "next-token probability"),
            vertical_spacing=0.18,
        )
        x = [f"{i}:{t}" for i, t in enumerate(self.str_tokens)]
        fig.add_trace(go.Bar(x=x, y=self.activation.tolist(), name="activation", marker_color="#7a5195"), 1, 1)
        fig.add_trace(go.Bar(x=self.tokens, y=self.probs_before.tolist(), name="before"), 2, 1)
        fig.add_trace(go.Bar(x=self.tokens, y=self.probs_after.tolist(), name=f"after ({self.mode})"), 2, 1)
        fig.update_layout(title=self.title, barmode="group", height=560)
        fig.update_xaxes(type="category")
        return fig


def steer_latent(
    model: HookedModel,
    sae: SAE,
    prompt: str,
    latent: int,
    mode: str = "steer",
    scale: float = 10.0,
    max_new_tokens: int = 12,
    k: int = 8,
) -> LatentSteerResult:
    """Next-token distribution and greedy generation of ``prompt`` before and after editing one SAE latent.

    ``mode``: ``ablate`` (the latent set to 0 at every position), ``steer`` (``scale`` added to it) or ``clamp``
    (held at ``scale``). The SAE is attached with its error term, so the edit moves the activation by exactly
    ``Δf · W_dec[latent]``. ``k``: the top next tokens shown from each distribution.

    >>> r = steer_latent(model, sae, "The Eiffel Tower is in the city of", 7, "steer", 0.0, max_new_tokens=2)
    >>> r.tokens[0], r.generation_after == r.generation_before, r.kl < 1e-6
    (' Paris', True, True)
    """
    from uncover.sae.attach import attach_sae

    if mode not in MODES:
        raise UncoverError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not 0 <= latent < sae.cfg.d_sae:
        raise UncoverError(f"latent {latent} is out of range; this SAE has latents 0..{sae.cfg.d_sae - 1}")
    ids = model.to_tokens(prompt)
    edit: dict[str, Any] = {"ablate": [latent]} if mode == "ablate" else {mode: {latent: float(scale)}}
    with torch.no_grad():
        with attach_sae(model, sae) as att:
            before = model(ids)[0, -1].float()  # [d_vocab]
        acts = att["hook_sae_acts_post"][0, :, latent].float().cpu()  # [pos]
        gen_before = model.generate(prompt, max_new_tokens=max_new_tokens) if max_new_tokens else ""
        with attach_sae(model, sae, record=False, **edit):
            after = model(ids)[0, -1].float()
            gen_after = model.generate(prompt, max_new_tokens=max_new_tokens) if max_new_tokens else ""
    logp_b, logp_a = before.log_softmax(-1), after.log_softmax(-1)
    shown = list(dict.fromkeys(logp_b.topk(k).indices.tolist() + logp_a.topk(k).indices.tolist()))
    kl = float((logp_b.exp() * (logp_b - logp_a)).sum().clamp(min=0))
    return LatentSteerResult(
        prompt=prompt,
        hook=sae.cfg.hook_name,
        latent=latent,
        mode=mode,
        scale=float(scale),
        str_tokens=model.to_str_tokens(ids[0]),
        activation=acts,
        ids=shown,
        tokens=model.to_str_tokens(torch.tensor(shown, dtype=torch.long)),
        probs_before=logp_b.exp()[shown].cpu(),
        probs_after=logp_a.exp()[shown].cpu(),
        kl=kl,
        generation_before=str(gen_before),
        generation_after=str(gen_after),
        max_new_tokens=max_new_tokens,
    )
