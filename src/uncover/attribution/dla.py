"""Direct logit attribution (Elhage et al. 2021; TransformerLens's ``logit_attrs``).

The final residual is a sum of component outputs (embeddings, each attention head, each
attention bias, each MLP). Freezing the final norm's scale at its actual value makes the
map residual → logit difference linear, so each component gets a share and the shares
sum exactly to the logit difference between an answer and a wrong token (before any
final soft-capping, which is monotone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from uncover.core.errors import UncoverError, UsageError
from uncover.core.names import act_name, attn_bias_label, head_label, mlp_label
from uncover.core.results import Result
from uncover.hooks.cache import norm_scale
from uncover.hooks.decode import target_ids

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.hooks.cache import ActivationCache
    from uncover.hooks.hooked import HookedModel


@dataclass
class DLAResult(Result):
    """Per-component contributions to ``logit[answer] - logit[wrong]``.

    Attributes:
        prompts: input prompts.
        answers, wrongs: the answer and wrong token per prompt.
        positions: the real-token position read in each prompt.
        labels: component names (``embed``, ``L3H5``, ``L3 attn bias``, ``MLP3``, ...).
        kinds: ``embed``, ``pos_embed``, ``head``, ``attn_bias``, ``mlp``, ``norm_bias``, ``unembed_bias``.
        layers, heads: layer and head of each component (``None`` where not applicable).
        contributions: ``[component, prompt]`` contributions (sum = ``logit_diff``).
        logit_diff: ``[prompt]`` the true logit difference before soft-capping.
        n_layers, n_heads: model shape (for the head grid).
        softcap: the model's final logit soft-cap (Gemma 2/3: ``c · tanh(logit / c)``), or ``None``.
        capped_diff: ``[prompt]`` the logit difference after the soft-cap (what the model outputs),
            or ``None`` without a cap. The components sum to ``logit_diff``, the pre-cap value: the
            cap is not linear, so it has no per-component share.
    """

    prompts: list[str]
    answers: list[str]
    wrongs: list[str]
    positions: list[int]
    labels: list[str]
    kinds: list[str]
    layers: list[int | None]
    heads: list[int | None]
    contributions: torch.Tensor
    logit_diff: torch.Tensor
    n_layers: int
    n_heads: int
    softcap: float | None = None
    capped_diff: torch.Tensor | None = None

    @property
    def title(self) -> str:
        return f"Direct logit attribution: {self.answers[0]!r} vs {self.wrongs[0]!r}"

    def summary(self) -> str:
        total = self.contributions.sum(0)
        mean = self.contributions.mean(1)
        top = mean.abs().argsort(descending=True)[:5].tolist()
        pre = "pre-cap logit diff" if self.softcap else "logit diff"
        lines = [
            f"{p!r}: {pre} {d:.3f} (components sum to {t:.3f})"
            for p, d, t in zip(self.prompts, self.logit_diff.tolist(), total.tolist())
        ]
        if self.softcap and self.capped_diff is not None:
            lines = [f"{line}; after the final soft-cap ({self.softcap:g}): {c:.3f}"
                     for line, c in zip(lines, self.capped_diff.tolist())]
        lines.append("largest: " + ", ".join(f"{self.labels[i]} {mean[i]:+.3f}" for i in top))
        return "\n".join(lines)

    def head_grid(self) -> torch.Tensor:
        """``[layer, head]`` mean contribution of each attention head."""
        grid = torch.zeros(self.n_layers, self.n_heads)
        mean = self.contributions.mean(1)
        for i, k in enumerate(self.kinds):
            if k == "head":
                grid[self.layers[i], self.heads[i]] = mean[i]
        return grid

    def to_frame(self) -> pd.DataFrame:
        """One row per (component, prompt)."""
        rows = []
        for c, label in enumerate(self.labels):
            for i in range(len(self.prompts)):
                rows.append({
                    "component": label, "kind": self.kinds[c], "layer": self.layers[c], "head": self.heads[c],
                    "prompt": i, "contribution": float(self.contributions[c, i]),
                })
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        from uncover.attribution.figures import dla_figure

        return dla_figure(self)


def dla_names(model: HookedModel) -> list[str]:
    """The hook values direct logit attribution reads (a cache holding them can be passed to it).

    >>> "blocks.0.attn.hook_z" in dla_names(model)
    True
    """
    cfg = model.cfg
    names = ["hook_embed", act_name("resid_post", cfg.n_layers - 1), "ln_final.hook_normalized"]
    names += ["hook_pos_embed"] if model.adapter.family.pos_embed else []
    for i in range(cfg.n_layers):
        names += [act_name("z", i), act_name("attn_out", i), act_name("mlp_out", i)]
    return names


def _per_prompt(x: str | int | Sequence[str | int], n: int, what: str) -> list[str | int]:
    if isinstance(x, (str, int)):
        return [x] * n
    x = list(x)
    if len(x) != n:
        raise UncoverError(f"{len(x)} {what} tokens for {n} prompts; give one per prompt or a single one")
    return x


def direct_logit_attribution(
    model: HookedModel,
    prompts: str | Sequence[str] | torch.Tensor,
    answer: str | int | Sequence[str | int],
    wrong: str | int | Sequence[str | int],
    *,
    position: int = -1,
    cache: ActivationCache | None = None,
) -> DLAResult:
    """Contribution of embeddings, each head, each attention bias and each MLP to a logit difference.

    ``answer``/``wrong``: single tokens (strings or ids), one for all prompts or one per prompt.
    ``position``: the real-token position whose prediction is explained (default: the last).
    ``cache``: a cache of these prompts holding :func:`dla_names` (one forward shared with other reads of
    the same prompts); by default DLA runs its own.

    >>> r = direct_logit_attribution(model, "When Mary and John went to the store, John gave a drink to",
    ...                              " Mary", " John")
    >>> float(r.contributions.sum(0)[0] - r.logit_diff[0]) < 1e-3
    True
    """
    batch = model.tokenize(prompts)
    prompts = model.prompt_texts(prompts)
    n = len(prompts)
    a_ids = target_ids(model, _per_prompt(answer, n, "answer"))
    w_ids = target_ids(model, _per_prompt(wrong, n, "wrong"))
    same = [i for i, (a, w) in enumerate(zip(a_ids, w_ids, strict=True)) if a == w]
    if same:
        raise UsageError(f"answer and wrong are the same token in prompt(s) {same}; the logit difference needs two "
                         "different tokens")
    cfg, ad = model.cfg, model.adapter
    cols = batch.columns(position)[:, 0]
    if (cols < 0).any():
        raise UncoverError(f"position {position} is outside a prompt")
    if cache is None:
        _, cache = model.run_with_cache(batch, names=dla_names(model))
    rows = torch.arange(n, device=cols.device)

    def at(t: torch.Tensor) -> torch.Tensor:  # [batch, pos, ...] -> [batch, ...]
        return t.expand(n, *t.shape[1:])[rows, cols]

    parts, labels, kinds, layers, heads = [at(cache["hook_embed"])], ["embed"], ["embed"], [None], [None]
    if ad.family.pos_embed:
        parts.append(at(cache["hook_pos_embed"]))
        labels, kinds, layers, heads = labels + ["pos_embed"], kinds + ["pos_embed"], layers + [None], heads + [None]
    for i in range(cfg.n_layers):
        res = at(cache.head_results(i))  # [batch, head, d_model]
        for h in range(cfg.n_heads):
            parts.append(res[:, h])
            labels.append(head_label(i, h))
            kinds.append("head")
            layers.append(i)
            heads.append(h)
        rest = at(cache[act_name("attn_out", i)]) - res.sum(1)
        if ad.b_O(i) is not None:
            parts.append(rest)
            labels.append(attn_bias_label(i))
            kinds.append("attn_bias")
            layers.append(i)
            heads.append(None)
        parts.append(at(cache[act_name("mlp_out", i)]))
        labels.append(mlp_label(i))
        kinds.append("mlp")
        layers.append(i)
        heads.append(None)
    stack = torch.stack(parts)  # [component, batch, d_model]
    stack = stack.to(torch.promote_types(stack.dtype, torch.float32))
    w, b, eps = ad.norm_params(ad.final_norm())
    final = at(cache.final_resid())
    scale = norm_scale(final, cfg.norm_kind, eps)  # [batch, 1]
    if cfg.norm_kind == "layer":
        stack = stack - stack.mean(-1, keepdim=True)
    W_U = ad.W_U.to(stack.dtype) if ad.logit_scale == 1.0 else ad.W_U.to(stack.dtype) * ad.logit_scale  # Cohere
    direction = (W_U[:, a_ids] - W_U[:, w_ids]).T  # [batch, d_model]
    if w is not None:
        direction = direction * w.to(stack.dtype)
    contrib = torch.einsum("cbd,bd->cb", stack / scale, direction)
    extras = []
    if b is not None:
        extras.append(("final norm bias", "norm_bias", (W_U[:, a_ids] - W_U[:, w_ids]).T @ b.to(stack.dtype)))
    if ad.b_U is not None:
        extras.append(("unembed bias", "unembed_bias", (ad.b_U[a_ids] - ad.b_U[w_ids]).to(stack.dtype)))
    for label, kind, value in extras:
        contrib = torch.cat([contrib, value.reshape(1, n)])
        labels.append(label)
        kinds.append(kind)
        layers.append(None)
        heads.append(None)
    normed = at(cache["ln_final.hook_normalized"]).to(stack.dtype)
    true = (normed * (W_U[:, a_ids] - W_U[:, w_ids]).T).sum(-1)
    if ad.b_U is not None:
        true = true + (ad.b_U[a_ids] - ad.b_U[w_ids]).to(stack.dtype)
    cap = ad.final_softcap
    capped = None
    if cap:
        la, lw = (normed * W_U[:, a_ids].T).sum(-1), (normed * W_U[:, w_ids].T).sum(-1)  # [prompt] each
        if ad.b_U is not None:
            la, lw = la + ad.b_U[a_ids].to(stack.dtype), lw + ad.b_U[w_ids].to(stack.dtype)
        capped = (cap * (torch.tanh(la / cap) - torch.tanh(lw / cap))).detach().cpu()
    return DLAResult(
        prompts=prompts,
        answers=[model._strs([t])[0] for t in a_ids],
        wrongs=[model._strs([t])[0] for t in w_ids],
        positions=[int(c) for c in cols],
        labels=labels,
        kinds=kinds,
        layers=layers,
        heads=heads,
        contributions=contrib.detach().cpu(),
        logit_diff=true.detach().cpu(),
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        softcap=float(cap) if cap else None,
        capped_diff=capped,
    )
