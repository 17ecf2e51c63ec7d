"""Training a crosscoder on paired activations of two models, and reading its latents.

:func:`paired_activations` harvests one hook of the base and of the changed model on the same token
blocks (:func:`uncover.sae.store.harvest`, the changed model from :class:`~uncover.diffing.changed.Change`).
:func:`train_crosscoder` trains a :class:`~uncover.diffing.crosscoder.Crosscoder` on them with the SAE
trainer (checkpoints in ``out_dir``, ``resume=True`` continues to the same weights as an uninterrupted
run). :func:`analyse_crosscoder` classifies every latent by its relative decoder norm (shared,
base-only, changed-only, mixed, dead) and lists the top contexts of the most model-specific ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UsageError
from uncover.core.results import Result
from uncover.diffing.changed import Change, resolve_change
from uncover.diffing.crosscoder import CLASSES, Crosscoder, crosscoder_info, latent_classes

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel
    from uncover.sae.train import TrainConfig, TrainResult


def paired_activations(base: HookedModel, change: Change, hook: str, tokens: torch.Tensor, batch_size: int = 8,
                       skip_first: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``([n, d_model], [n, d_model])``: ``hook`` of the base and of the changed model on ``tokens`` ``[blocks, pos]``.

    Row ``r`` is block ``r // (pos - skip_first)``, position ``skip_first + r % (pos - skip_first)``.

    >>> from uncover.diffing.changed import resolve_change
    >>> xa, xb = paired_activations(model, resolve_change(model, {}), "blocks.1.hook_resid_post",
    ...                             torch.tensor([[1, 2, 3, 4]]))
    >>> xa.shape, torch.equal(xa, xb)
    (torch.Size([3, 576]), True)
    """
    from uncover.sae.store import harvest

    xa = harvest(base, hook, tokens, batch_size=batch_size, skip_first=skip_first)
    with change.applied(base) as m:
        xb = harvest(m, hook, tokens, batch_size=batch_size, skip_first=skip_first)
    return xa, xb  # type: ignore[return-value]


def train_crosscoder(base: HookedModel, changed: Any, hook: str, tokens: torch.Tensor, d_sae: int,
                     cfg: TrainConfig, *, batch_size: int = 256, out_dir: str | Path | None = None,
                     resume: bool = False, seed: int = 0, progress: bool = False
                     ) -> tuple[TrainResult, torch.Tensor, torch.Tensor]:
    """Train a crosscoder at ``hook`` on the base and ``changed`` (see :func:`resolve_change`) over ``tokens``.

    Returns ``(training result with .sae the crosscoder, base activations, changed activations)``.
    ``cfg.sparsity_coeff`` is Lindsey et al.'s ``lambda`` (inputs scaled to ``E||[x_A, x_B]||^2 = 2 d_model``).

    >>> from uncover.sae import TrainConfig
    >>> r, xa, xb = train_crosscoder(model, {}, "blocks.1.hook_resid_post", torch.randint(0, 999, (4, 17)), 64,
    ...                              TrainConfig(steps=3), batch_size=32)
    >>> r.sae.W_dec.shape
    torch.Size([64, 1152])
    """
    from uncover.sae.store import TensorSource
    from uncover.sae.train import train_sae

    change = changed if isinstance(changed, Change) else resolve_change(base, changed)
    xa, xb = paired_activations(base, change, hook, tokens)
    if len(xa) < batch_size:
        raise UsageError(f"{len(xa)} paired activations, fewer than one batch of {batch_size}; give more tokens")
    cc = Crosscoder.create(xa.shape[-1], d_sae, hook, (base.name or "base", change.source), seed=seed)
    src = TensorSource(torch.cat([xa, xb], dim=-1), batch_size, seed)
    return train_sae(cc, src, cfg, out_dir=out_dir, resume=resume, progress=progress), xa, xb


@dataclass
class CrosscoderAnalysis(Result):
    """Latents of a crosscoder, classified by relative decoder norm, with top contexts.

    Attributes:
        crosscoder: what the crosscoder is (d_model, d_sae, hook, models).
        relative_norm: ``[d_sae]`` ``||d_B|| / (||d_A|| + ||d_B||)`` (0.5 shared, 0 base-only, 1 changed-only).
        cosine: ``[d_sae]`` cosine of each latent's two decoder vectors.
        frequency: ``[d_sae]`` share of the analysed tokens on which each latent fires.
        classes: the class of each latent (:data:`~uncover.diffing.crosscoder.CLASSES`).
        latents: the most model-specific live latents, one dict each (latent, class, relative_norm, cosine,
            frequency, max_act, contexts: the top contexts as text with the token in ``[[ ]]``).
        fve: fraction of variance explained per model (``base``, ``changed``) on the analysed activations.
    """

    crosscoder: dict[str, Any]
    relative_norm: torch.Tensor
    cosine: torch.Tensor
    frequency: torch.Tensor
    classes: list[str]
    latents: list[dict[str, Any]] = field(default_factory=list)
    fve: dict[str, float] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"Crosscoder latents at {self.crosscoder.get('hook_name', '')} ({self.crosscoder.get('d_sae')} latents)"

    def counts(self) -> dict[str, int]:
        """Latents per class."""
        return {c: self.classes.count(c) for c in CLASSES}

    def summary(self) -> str:
        c = self.counts()
        parts = ", ".join(f"{v} {k}" for k, v in c.items())
        fve = ", ".join(f"{k} {v:.3f}" for k, v in self.fve.items())
        return f"{self.title}: {parts}; FVE {fve}"

    def cli_text(self) -> str:
        lines = [self.summary()]
        for r in self.latents:
            lines.append(f"  L{r['latent']:<5} {r['class']:<12} r={r['relative_norm']:.2f} cos={r['cosine']:+.2f} "
                         f"freq={r['frequency']:.3f}  " + " | ".join(r["contexts"][:2]))
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.items() if k != "contexts"} | {"context": (r["contexts"] or [""])[0]}
                             for r in self.latents])

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        live = [i for i, c in enumerate(self.classes) if c != "dead"]
        fig = go.Figure(go.Histogram(x=self.relative_norm[live].tolist(), nbinsx=40))
        fig.update_layout(title=self.summary(), xaxis_title="relative decoder norm ||d_changed|| / (||d_base|| + "
                          "||d_changed||)", yaxis_title="latents")
        return fig


def block_context(tokens: torch.Tensor, model: HookedModel | None = None, skip_first: int = 1,
                  width: int = 6) -> Callable[[int], str]:
    """``row -> text``: the context of harvested row ``row`` of token blocks ``[blocks, pos]``, token in ``[[ ]]``.

    >>> block_context(torch.tensor([[5, 6, 7, 8]]))(1)
    '5 6[[7]]'
    """
    tok = getattr(model, "tokenizer", None)
    decode = (lambda ids: tok.decode(ids)) if tok is not None else (lambda ids: " ".join(map(str, ids)))
    per = tokens.shape[1] - skip_first

    def context(row: int) -> str:
        b, p = divmod(row, per)
        p += skip_first
        ids = tokens[b, max(0, p - width) : p + 1].tolist()
        return decode(ids[:-1]) + "[[" + decode(ids[-1:]) + "]]"

    return context


@torch.no_grad()
def analyse_crosscoder(cc: Crosscoder, xa: torch.Tensor, xb: torch.Tensor,
                       context: Callable[[int], str] | None = None, top: int = 10,
                       n_contexts: int = 3) -> CrosscoderAnalysis:
    """Classify ``cc``'s latents and show the ``top`` most model-specific live ones with their top contexts.

    ``xa``, ``xb``: paired activations ``[n, d_model]`` (:func:`paired_activations`); ``context``: row -> text
    (:func:`block_context` of the harvested token blocks). A latent that never fires on them is ``dead``.

    >>> cc = Crosscoder.create(d_model=4, d_sae=8)
    >>> a = analyse_crosscoder(cc, torch.randn(50, 4), torch.randn(50, 4), top=2)
    >>> len(a.classes), len(a.latents) <= 2
    (8, True)
    """
    f = torch.cat([cc.encode_pair(xa[i : i + 4096], xb[i : i + 4096]) for i in range(0, len(xa), 4096)])
    ra, rb = cc.decode_pair(f)
    fve = {name: float(1 - (r - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp(min=1e-12))
           for name, r, x in (("base", ra, xa), ("changed", rb, xb))}
    freq = (f > 0).float().mean(0)
    rel, cos = cc.relative_norms(), cc.decoder_cosines()
    classes = latent_classes(rel, freq > 0)
    live = [i for i, c in enumerate(classes) if c != "dead"]
    order = sorted(live, key=lambda i: -abs(float(rel[i]) - 0.5))[:top]
    rows = []
    for i in order:
        best = f[:, i].topk(min(n_contexts, len(f))).indices.tolist()
        ctx = [context(r) for r in best if float(f[r, i]) > 0] if context is not None else []
        rows.append({"latent": i, "class": classes[i], "relative_norm": float(rel[i]), "cosine": float(cos[i]),
                     "frequency": float(freq[i]), "max_act": float(f[:, i].max()), "contexts": ctx})
    return CrosscoderAnalysis(crosscoder_info(cc), rel.clone(), cos.clone(), freq, classes, rows, fve)
