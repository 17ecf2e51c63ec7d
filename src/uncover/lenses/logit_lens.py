"""Logit lens (nostalgebraist 2020): decode the residual stream after every layer.

For each prompt, each chosen position and each layer boundary (``0`` = the embeddings,
``n_layers`` = the final residual, whose decoding is the model's own output) the
result holds the top-k tokens and the probability and rank of chosen target tokens.
The tuned lens (``tuned_lens.py``) reuses this with a learned translator per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
import torch

from uncover.core.errors import UsageError
from uncover.core.names import act_name
from uncover.core.results import Result
from uncover.hooks.decode import decode_resid, target_ids

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel

Translator = Callable[[int, torch.Tensor], torch.Tensor]
"""``(layer, resid [..., d_model]) -> resid``: maps the residual after ``layer`` layers before decoding."""


@dataclass
class LensResult(Result):
    """What a lens read at each layer.

    Attributes:
        prompts: the input prompts.
        str_tokens: tokens of each prompt.
        positions: real-token positions read, per prompt ``[prompt][k]`` (non-negative).
        layers: layer boundaries (``0`` = embeddings ... ``n_layers`` = final residual).
        top_tokens: ``[prompt][layer][k_pos][top_k]`` decoded token strings.
        top_probs: ``[prompt, layer, k_pos, top_k]`` probabilities.
        targets: target token strings.
        target_probs: ``[prompt, layer, k_pos, n_targets]`` probabilities.
        target_ranks: ``[prompt, layer, k_pos, n_targets]`` rank (0 = top) of each target.
        kl_to_final: ``[prompt, layer, k_pos]`` KL(final ‖ layer) in nats.
        lens: ``logit`` or ``tuned``.
    """

    prompts: list[str]
    str_tokens: list[list[str]]
    positions: list[list[int]]
    layers: list[int]
    top_tokens: list
    top_probs: torch.Tensor
    targets: list[str] = field(default_factory=list)
    target_probs: torch.Tensor | None = None
    target_ranks: torch.Tensor | None = None
    kl_to_final: torch.Tensor | None = None
    lens: str = "logit"

    @property
    def title(self) -> str:
        return f"{self.lens.capitalize()} lens"

    def summary(self) -> str:
        lines = []
        for i, p in enumerate(self.prompts):
            pos = self.positions[i][-1]
            tops = [self.top_tokens[i][layer][-1][0] for layer in range(len(self.layers))]
            first = next((self.layers[j] for j, t in enumerate(tops) if t == tops[-1]), None)
            line = f"{p!r} @ {self.str_tokens[i][pos]!r}: final top token {tops[-1]!r}, first top at layer {first}"
            if self.targets:
                probs = ", ".join(
                    f"{t!r} p={self.target_probs[i, -1, -1, j]:.3f}" for j, t in enumerate(self.targets)
                )
                line += f"; {probs}"
            lines.append(line)
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        """One row per (prompt, position, layer, token): ``kind`` is ``top`` or ``target``."""
        rows = []
        for i in range(len(self.prompts)):
            for li, layer in enumerate(self.layers):
                for k, pos in enumerate(self.positions[i]):
                    base = {"prompt": i, "position": pos, "token_at_pos": self.str_tokens[i][pos], "layer": layer}
                    if self.kl_to_final is not None:
                        base["kl_to_final"] = float(self.kl_to_final[i, li, k])
                    for r, (tok, pr) in enumerate(zip(self.top_tokens[i][li][k], self.top_probs[i, li, k].tolist())):
                        rows.append({**base, "kind": "top", "rank": r, "token": tok, "prob": pr})
                    for j, t in enumerate(self.targets):
                        rows.append({**base, "kind": "target", "rank": int(self.target_ranks[i, li, k, j]),
                                     "token": t, "prob": float(self.target_probs[i, li, k, j])})
        return pd.DataFrame(rows)

    def plot(self, prompt: int = 0) -> go.Figure:
        """Heatmap of the top token and its probability, layer × position, for one prompt."""
        from uncover.lenses.figures import lens_heatmap

        return lens_heatmap(self, prompt)


def _positions(str_tokens: list[str], positions: int | Sequence[int] | None) -> list[int]:
    n = len(str_tokens)
    if positions is None:
        return list(range(n))
    pos = [positions] if isinstance(positions, int) else list(positions)
    out = []
    for p in pos:
        q = p + n if p < 0 else p
        if not 0 <= q < n:
            raise IndexError(f"position {p} is outside the prompt ({n} tokens)")
        out.append(q)
    return out


def run_lens(
    model: HookedModel,
    prompts: str | Sequence[str] | torch.Tensor,
    *,
    positions: int | Sequence[int] | None = -1,
    targets: Sequence[str | int] | str | int | None = None,
    k: int = 5,
    translate: Translator | None = None,
    lens: str = "logit",
) -> LensResult:
    """Decode the residual stream at every layer boundary (shared by logit and tuned lens)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= model.cfg.d_vocab:
        raise UsageError(f"k must be an integer in 1..{model.cfg.d_vocab} (the vocabulary), got {k!r}")
    batch = model.tokenize(prompts)
    texts = model.prompt_texts(prompts)
    tids = target_ids(model, targets)
    n = model.cfg.n_layers
    names = [act_name("resid_pre", i) for i in range(n)] + [act_name("resid_post", n - 1)]
    _, cache = model.run_with_cache(batch, names=names)
    resid = cache.accumulated_resid().tensor  # [layer + 1, batch, pos, d_model]
    str_tokens = [model._strs(r[m.bool()].tolist()) for r, m in zip(batch.input_ids, batch.attention_mask)]
    prompts = texts
    all_pos = [_positions(st, positions) for st in str_tokens]
    kmax = max(len(p) for p in all_pos)
    L = n + 1
    top_tokens: list = []
    top_probs = torch.zeros(len(prompts), L, kmax, k)
    t_probs = torch.zeros(len(prompts), L, kmax, len(tids))
    t_ranks = torch.zeros(len(prompts), L, kmax, len(tids), dtype=torch.long)
    kl = torch.zeros(len(prompts), L, kmax)
    with torch.no_grad():
        for i, pos in enumerate(all_pos):
            x = resid[:, i, pos]  # [layer, k_pos, d_model]
            if translate is not None:
                x = torch.stack([translate(layer, x[layer]) if layer < n else x[layer] for layer in range(L)])
            logp = torch.log_softmax(decode_resid(model, x).float(), dim=-1)  # [layer, k_pos, vocab]
            probs = logp.exp()
            tp, ti = probs.topk(k, dim=-1)
            top_probs[i, :, : len(pos)] = tp
            top_tokens.append([[model._strs(ti[layer, j].tolist()) for j in range(len(pos))] for layer in range(L)])
            kl[i, :, : len(pos)] = (probs[-1:] * (logp[-1:] - logp)).sum(-1)
            if tids:
                sel = probs[..., tids]  # [layer, k_pos, n_t]
                t_probs[i, :, : len(pos)] = sel
                t_ranks[i, :, : len(pos)] = (probs.unsqueeze(-1) > sel.unsqueeze(-2)).sum(-2)
    return LensResult(
        prompts=prompts,
        str_tokens=str_tokens,
        positions=all_pos,
        layers=list(range(L)),
        top_tokens=top_tokens,
        top_probs=top_probs,
        targets=[model._strs([t])[0] for t in tids],
        target_probs=t_probs if tids else None,
        target_ranks=t_ranks if tids else None,
        kl_to_final=kl,
        lens=lens,
    )


def logit_lens(
    model: HookedModel,
    prompts: str | Sequence[str] | torch.Tensor,
    *,
    positions: int | Sequence[int] | None = -1,
    targets: Sequence[str | int] | str | int | None = None,
    k: int = 5,
) -> LensResult:
    """Logit lens: the final norm and unembedding applied to the residual after each layer.

    ``positions``: real-token positions per prompt (negative from the end; ``None`` = all).
    ``targets``: tokens (single-token strings or ids) whose probability and rank to track.

    >>> r = logit_lens(model, "The Eiffel Tower is in the city of", targets=[" Paris"])
    >>> r.target_probs[0, -1, -1, 0] > 0.3
    tensor(True)
    """
    return run_lens(model, prompts, positions=positions, targets=targets, k=k)
