"""Activation patching (Vig et al. 2020; Meng et al. 2022; Heimersheim & Nanda 2024).

Run the *base* prompt, replace one activation by its value on the *source* prompt, and
measure how much of the behaviour moves. Denoising (base = corrupt, source = clean) asks
what is sufficient to restore the clean answer; noising (base = clean, source = corrupt)
what is necessary.

Exact and fast: every patched run of one layer goes in one batch; each run starts at the
patched layer from the cached base residual (earlier layers cannot change); and
positions before the first token where the prompts differ are not run at all, since
causal attention makes their activations identical in both runs (their value is the base
metric). Tests compare against one full forward pass per patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name, head_label, layer_label
from uncover.core.results import Result
from uncover.hooks import metrics as M
from uncover.hooks.replay import capture_calls, run_staged, stage_offsets

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel

HOOKS = ("resid_pre", "attn_out", "mlp_out", "z")
PER = ("pos", "head", "head_pos")


@dataclass
class PatchResult(Result):
    """Effect of patching each site.

    Attributes:
        hook: the patched hook kind (``resid_pre``, ``attn_out``, ``mlp_out`` or ``z``).
        per: ``pos`` (grid ``[layer, pos]``), ``head`` (``[layer, head]``) or ``head_pos`` (``[layer, head, pos]``).
        grid: the metric after each patch (normalised to recovery when ``normalised``).
        str_tokens: the base prompt's tokens.
        clean_value, corrupt_value: the metric on the unpatched clean and corrupt runs.
        metric: metric name; direction: ``denoise`` or ``noise``; normalised: whether ``grid`` is recovery.
    """

    hook: str
    per: str
    grid: torch.Tensor
    str_tokens: list[str]
    clean_value: float
    corrupt_value: float
    metric: str
    direction: str
    normalised: bool
    first_diff: int

    @property
    def title(self) -> str:
        return f"Activation patching ({self.direction}) of {self.hook} per {self.per.replace('_', ' & ')}"

    def summary(self) -> str:
        flat = self.grid.flatten()
        top = flat.abs().argsort(descending=True)[:5]
        cells = [self._cell(int(i)) for i in top]
        unit = "recovery" if self.normalised else self.metric
        return (
            f"{self.metric}: clean {self.clean_value:.3f}, corrupt {self.corrupt_value:.3f}; "
            f"largest {unit}: " + ", ".join(f"{c} {float(flat[i]):+.3f}" for c, i in zip(cells, top))
        )

    def _cell(self, flat_index: int) -> str:
        idx = torch.unravel_index(torch.tensor(flat_index), self.grid.shape)
        idx = [int(i) for i in idx]
        if self.per == "pos":
            return f"{layer_label(idx[0])}@{idx[1]}:{self.str_tokens[idx[1]]!r}"
        if self.per == "head":
            return head_label(idx[0], idx[1])
        return f"{head_label(idx[0], idx[1])}@{idx[2]}"

    def to_frame(self) -> pd.DataFrame:
        """One row per patched site."""
        rows = []
        for flat, v in enumerate(self.grid.flatten().tolist()):
            idx = [int(i) for i in torch.unravel_index(torch.tensor(flat), self.grid.shape)]
            row = {"layer": idx[0], "value": v}
            if self.per == "pos":
                row.update(position=idx[1], token=self.str_tokens[idx[1]])
            elif self.per == "head":
                row.update(head=idx[1])
            else:
                row.update(head=idx[1], position=idx[2], token=self.str_tokens[idx[2]])
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        g = self.grid if self.per != "head_pos" else self.grid.abs().amax(-1)
        x = [f"{i}:{t!r}" for i, t in enumerate(self.str_tokens)] if self.per == "pos" else list(range(g.shape[1]))
        lim = float(g.abs().max()) or 1.0
        fig = go.Figure(go.Heatmap(z=g.numpy(), x=x, colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
                                   colorbar={"title": "recovery" if self.normalised else self.metric}))
        fig.update_layout(title=self.title, yaxis_title="layer",
                          xaxis_title="position" if self.per == "pos" else "head", height=max(420, 16 * g.shape[0]))
        return fig


def check_pair(model: HookedModel, clean: str | torch.Tensor,
               corrupt: str | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[1, pos]`` of a clean and a corrupted prompt; refuses prompts of different lengths.

    >>> clean, corrupt = check_pair(model, "When Mary and John went to the store, John gave a drink to",
    ...                             "When Mary and John went to the store, Mary gave a drink to")
    >>> clean.shape == corrupt.shape, int((clean != corrupt).sum())
    (True, 1)
    """
    a, b = model.tokenize(clean).input_ids, model.tokenize(corrupt).input_ids
    if a.shape != b.shape:
        raise UncoverError(
            f"clean has {a.shape[1]} tokens but corrupt has {b.shape[1]}; activation patching needs equal lengths"
        )
    return a, b


def activation_patching(
    model: HookedModel,
    clean: str | torch.Tensor,
    corrupt: str | torch.Tensor,
    answer: str | int,
    wrong: str | int,
    *,
    hook: str = "resid_pre",
    per: str = "pos",
    metric: str = "logit_diff",
    direction: str = "denoise",
    normalise: bool = True,
) -> PatchResult:
    """Patch every (layer, position), (layer, head) or (layer, head, position) site of one prompt pair.

    ``hook``: ``resid_pre``, ``attn_out``, ``mlp_out`` (per position) or ``z`` (per head, per head & position).
    ``metric``: ``logit_diff``, ``prob`` or ``logprob`` of ``answer`` (vs ``wrong``) at the last position.

    >>> r = activation_patching(model, "When Mary and John went to the store, John gave a drink to",
    ...     "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")
    >>> r.grid.shape  # [layer, position]: 30 blocks, 14 tokens
    torch.Size([30, 14])
    """
    from uncover.hooks.decode import target_ids

    if hook not in HOOKS:
        raise UncoverError(f"unknown hook {hook!r}; valid: {', '.join(HOOKS)}")
    if per not in PER or (hook == "z") == (per == "pos"):
        valid = "head, head_pos" if hook == "z" else "pos"
        raise UncoverError(f"per={per!r} does not fit hook={hook!r}; valid: {valid}")
    if direction not in ("denoise", "noise"):
        raise UncoverError(f"unknown direction {direction!r}; valid: denoise, noise")
    a_id, w_id = target_ids(model, [answer, wrong])
    fn = M.make_metric(metric, a_id, w_id)
    clean_ids, corrupt_ids = check_pair(model, clean, corrupt)
    base_ids, src_ids = (corrupt_ids, clean_ids) if direction == "denoise" else (clean_ids, corrupt_ids)
    n_pos = base_ids.shape[1]
    diff = (base_ids[0] != src_ids[0]).nonzero()
    first = int(diff[0]) if len(diff) else n_pos
    cfg = model.cfg
    n = cfg.n_layers
    names = [act_name("resid_pre", i) for i in range(n)]
    src_names = [act_name(hook, i) for i in range(n)]
    base_batch = model.tokenize(base_ids)
    base_logits, calls = capture_calls(model, base_batch)
    _, base_cache = model.run_with_cache(base_batch, names=names)
    src_logits, src_cache = model.run_with_cache(src_ids, names=src_names)
    base_value = float(fn(base_logits[:, -1])[0])
    src_value = float(fn(src_logits[:, -1])[0])
    clean_value, corrupt_value = (src_value, base_value) if direction == "denoise" else (base_value, src_value)

    shape = (n, n_pos) if per == "pos" else (n, cfg.n_heads) if per == "head" else (n, cfg.n_heads, n_pos)
    grid = torch.full(shape, base_value)
    positions = list(range(first, n_pos))
    if per == "pos":
        rows = [(None, p) for p in positions]
    elif per == "head":
        rows = [(h, None) for h in range(cfg.n_heads)] if positions else []
    else:
        rows = [(h, p) for h in range(cfg.n_heads) for p in positions]
    if rows:
        stages: dict[int, torch.Tensor] = {}
        hooks = []
        offsets = stage_offsets({layer: len(rows) for layer in range(n)})
        for layer in range(n):
            resid = base_cache[names[layer]].expand(len(rows), -1, -1).clone()
            src = src_cache[src_names[layer]][0]
            if hook == "resid_pre":
                for k, (_, p) in enumerate(rows):
                    resid[k, p] = src[p]
            else:
                hooks.append((src_names[layer], _row_patch(rows, src, first, offsets[layer])))
            stages[layer] = resid
        with model.hooks(hooks):
            logits = run_staged(model, calls, stages, n_pos - 1)
        values = fn(logits).float().cpu().view(n, len(rows))
        for layer in range(n):
            for k, (h, p) in enumerate(rows):
                idx = (layer, p) if per == "pos" else (layer, h) if per == "head" else (layer, h, p)
                grid[idx] = values[layer, k]
    if normalise:
        grid = M.normalise(grid, clean_value, corrupt_value)
    return PatchResult(
        hook=hook, per=per, grid=grid, str_tokens=model._strs(base_ids[0].tolist()), clean_value=clean_value,
        corrupt_value=corrupt_value, metric=metric, direction=direction, normalised=normalise, first_diff=first,
    )


def _row_patch(rows: list[tuple[int | None, int | None]], src: torch.Tensor, first: int, offset: int):
    """Hook fn: batch row ``offset + k`` gets ``src`` at row ``k``'s (head, position); ``None`` means all heads /
    positions ≥ first."""

    def fn(value: torch.Tensor, hp: object) -> torch.Tensor:
        out = value.clone()
        for j, (h, p) in enumerate(rows):
            k = offset + j
            pos = slice(first, None) if p is None else p
            if h is None:
                out[k, pos] = src[pos]
            else:
                out[k, pos, h] = src[pos, h]
        return out

    return fn
