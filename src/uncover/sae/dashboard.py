"""Feature dashboards: top-activating contexts, logit effects and activation density of SAE latents.

The presentation of Bricken et al. 2023 ("Towards Monosemanticity") and Neuronpedia, in
one self-contained HTML page: for each feature its highlighted max-activating contexts
(streamed over a corpus in bounded memory with :class:`~uncover.hooks.streaming.StreamingTopK`),
the tokens its decoder direction promotes and suppresses (``(W_dec[i] * g) @ W_U`` with
``g`` the final norm's gain, as for MLP value vectors in Geva et al. 2022) and its firing
density; plus the density histogram of all latents.
"""

from __future__ import annotations

import html as _html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.html import Section
from uncover.core.results import Result
from uncover.hooks.contexts import TopActivations, contexts_html
from uncover.hooks.harvest import hook_values
from uncover.hooks.streaming import StreamingTopK

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel
    from uncover.sae.base import SAE


@dataclass
class FeatureDashboard(Result):
    """Dashboards of some SAE features.

    Attributes:
        features: the feature indices shown.
        contexts: their top-activating contexts (a :class:`TopActivations`).
        density: ``[d_sae]`` firing frequency of every latent on the corpus.
        top_tokens, bottom_tokens: per feature, the most promoted / suppressed tokens with logit values.
    """

    features: list[int]
    contexts: TopActivations
    density: torch.Tensor
    top_tokens: list[list[tuple[str, float]]]
    bottom_tokens: list[list[tuple[str, float]]]

    @property
    def title(self) -> str:
        return f"SAE feature dashboards at {self.contexts.hook}"

    def summary(self) -> str:
        lines = [f"{len(self.features)} feature(s); {float((self.density == 0).float().mean()):.1%} of latents never "
                 f"fired on {self.contexts.tokens.numel()} tokens"]
        for j, f in enumerate(self.features):
            toks, _, m = self.contexts.context(j, 0)
            lines.append(f"  F{f} (density {float(self.density[f]):.2%}): top token {toks[m]!r} in "
                         f"{''.join(toks)!r}; promotes {[t for t, _ in self.top_tokens[j][:5]]}")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for j, f in enumerate(self.features):
            for r in range(self.contexts.values.shape[1]):
                toks, _, m = self.contexts.context(j, r)
                rows.append({"feature": f, "density": float(self.density[f]), "rank": r,
                             "activation": float(self.contexts.values[j, r]), "token": toks[m],
                             "context": "".join(toks), "promotes": " ".join(t for t, _ in self.top_tokens[j][:5])})
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        d = self.density.clamp(min=1e-7).log10()
        fig = go.Figure(go.Histogram(x=d.tolist(), nbinsx=60))
        fig.update_layout(title="Feature density (log10 firing frequency; never-firing latents at -7)",
                          xaxis_title="log10 density", yaxis_title="latents")
        return fig

    def feature_html(self, j: int) -> str:
        """The card of the ``j``-th feature shown."""
        f = self.features[j]
        c = self.contexts
        rows = []
        for r in range(c.values.shape[1]):
            toks, acts, m = c.context(j, r)
            rows.append((f"#{r}", toks, acts, m, float(c.values[j, r])))

        def toks(items: list[tuple[str, float]]) -> str:
            return " ".join(f"<code>{_html.escape(repr(t))}</code>&nbsp;{v:+.2f}" for t, v in items)

        return (f"<h3>Feature {f}</h3><p class='meta'>density {float(self.density[f]):.3%} · max activation "
                f"{float(c.values[j, 0]):.3g}</p><p>promotes: {toks(self.top_tokens[j])}</p>"
                f"<p>suppresses: {toks(self.bottom_tokens[j])}</p>"
                + contexts_html(rows, float(c.values[j, 0])))

    def html_sections(self) -> list[Any]:
        """The figure and table, then one card per feature (contexts, logit effects, density)."""
        cards = "\n".join(self.feature_html(j) for j in range(len(self.features)))
        return [Section.from_result(self), Section("Features", cards)]


def decoder_logits(model: HookedModel, sae: SAE, features: Sequence[int]) -> torch.Tensor:
    """``[n, d_vocab]``: each feature's decoder row through the final norm's gain and ``W_U``.

    >>> decoder_logits(model, sae, [0, 1]).shape
    torch.Size([2, 49152])
    """
    w = sae.W_dec[list(features)].detach().float()
    g, _, _ = model.adapter.norm_params(model.adapter.final_norm())
    if g is not None:
        w = w * g.detach().float()
    return w @ model.W_U.detach().float()


@torch.no_grad()
def feature_dashboard(model: HookedModel, sae: SAE, features: Sequence[int] | None = None, *,
                      tokens: torch.Tensor | None = None, n_random: int = 12, k: int = 8, batch_size: int = 8,
                      window: tuple[int, int] = (12, 3), top_logits: int = 8, seed: int = 0) -> FeatureDashboard:
    """Dashboards of ``features`` (default: ``n_random`` random latents that fire, drawn with ``seed``).

    ``tokens``: ``[n_blocks, pos]`` (default: 128 held-out blocks of the embedded corpus).
    The first position of each block is skipped, as in training.

    >>> from uncover.data.corpus import token_blocks
    >>> dash = feature_dashboard(model, sae, [10, 20], tokens=token_blocks(model, block_len=32, split="heldout")[:4])
    >>> path = dash.to_html(tmp / "features.html")
    """
    from uncover.data.corpus import token_blocks

    hook = sae.cfg.hook_name
    model.site(hook)
    if tokens is None:
        tokens = token_blocks(model, block_len=64, split="heldout")[:128]
    if features is not None:
        _bad = [f for f in features if not 0 <= f < sae.cfg.d_sae]
        if _bad:
            raise UncoverError(f"feature(s) {_bad} out of range; valid: 0..{sae.cfg.d_sae - 1}")
    batches = []
    fired = torch.zeros(sae.cfg.d_sae)
    n = 0
    for v in hook_values(model, tokens, hook, batch_size=batch_size):
        f = sae.encode(v[:, 1:])
        fired += (f > 0).flatten(0, 1).sum(0)
        n += f.shape[0] * f.shape[1]
        batches.append(f if features is None else f[..., list(features)])
    density = fired / max(n, 1)
    if features is None:
        alive = (density > 0).nonzero().flatten()
        if not len(alive):
            raise UncoverError("no latent fires on these tokens")
        g = torch.Generator().manual_seed(seed)
        features = sorted(alive[torch.randperm(len(alive), generator=g)[:n_random]].tolist())
        batches = [b[..., features] for b in batches]
    features = list(features)
    stream = StreamingTopK(k, len(features), window)
    for b in batches:
        stream.update(b)
    ctx = TopActivations.from_stream(model, stream, hook, [f"F{f}" for f in features], tokens[:, 1:],
                                     density[features], density[features])
    logits = decoder_logits(model, sae, features)
    top = logits.topk(top_logits, dim=-1)
    bot = logits.topk(top_logits, dim=-1, largest=False)
    all_ids = sorted(set(top.indices.flatten().tolist()) | set(bot.indices.flatten().tolist()))
    ts = dict(zip(all_ids, model._strs(all_ids)))
    top_tokens = [[(ts[int(i)], float(v)) for i, v in zip(ti, tv)] for ti, tv in zip(top.indices, top.values)]
    bot_tokens = [[(ts[int(i)], float(v)) for i, v in zip(ti, tv)] for ti, tv in zip(bot.indices, bot.values)]
    return FeatureDashboard(features, ctx, density, top_tokens, bot_tokens)
