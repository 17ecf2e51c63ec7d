"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", ROME).

Corrupt the subject tokens of a factual prompt by adding Gaussian noise to their embeddings
(``hook_embed``; scale ``3 ×`` the standard deviation of the embeddings *as they are at*
``hook_embed``, so that families which scale their embeddings, such as Gemma's √d_model, get
the same corruption; seeded, several samples), then restore one clean state at one (layer,
token) and measure the *indirect effect*: the probability of the correct object after the
restoration minus its probability in the corrupted run, averaged over the noise samples.
The result reports the corruption's drop of the probability and warns (``warning``) when
the noise barely moves it: then no restoration can show anything.

Kinds of restored state:

- ``hidden``: the residual stream *after* block ``l`` (``blocks.{l}.hook_resid_post``), as in
  the paper's figures (row ``l`` = output of layer ``l``). Restoring ``resid_pre`` instead would
  shift every row by one and spend the top row on the embeddings, which the noise itself
  defines.
- ``mlp`` / ``attn``: the MLP or attention output at token ``p`` in a window of ``window``
  layers around ``l`` (``range(l - window // 2, l + ceil(window / 2))``, clipped; the paper's
  centring).

Fast and exact: every restoration of a pass starts at the first layer it changes, from the
cached corrupted residual of its noise sample (:func:`uncover.hooks.replay.run_staged`:
rows join the batch at their layer), all noise samples and restorations share one batch, and
tokens before the first subject token are not run (noise cannot reach them through causal
attention, so their effect is exactly 0). Tests compare every cell with one forward pass per
restoration under the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name
from uncover.core.results import Result
from uncover.hooks.decode import decode_resid, target_ids
from uncover.hooks.replay import capture_calls, run_staged

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel

KINDS = ("hidden", "mlp", "attn")
CATEGORIES = ("first subject token", "middle subject tokens", "last subject token", "first subsequent token",
              "further tokens", "last token")
#: the hook a restoration of each windowed kind writes (``hidden`` restores ``resid_post`` of one layer)
SITES = {"mlp": "mlp_out", "attn": "attn_out"}
_LABEL = {"hidden": "hidden state", "mlp": "MLP output (window)", "attn": "attention output (window)"}
_COLORS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}


@dataclass
class CausalTraceResult(Result):
    """Indirect effect of restoring each (layer, token) state of a subject-corrupted run.

    Attributes:
        grids: kind (``hidden``, ``mlp``, ``attn``) -> ``[layer, pos]`` indirect effect: p(answer)
            after restoring minus p(answer) corrupted, averaged over noise samples (and prompts).
        str_tokens: the prompt's tokens, or the six token categories of Meng et al. when averaged.
        subject: indices into ``str_tokens`` of the subject tokens.
        answer: the answer token (``*`` when averaged over different answers);
        clean_prob, corrupt_prob: its probability clean and corrupted (mean).
        samples: noise samples per prompt; noise: the noise standard deviation used;
        window: layers restored together for ``mlp``/``attn``; n_prompts: prompts averaged.
        warning: non-empty when the corruption lowers p(answer) by less than
            :data:`WEAK_DROP` of its clean value (the trace then measures nothing; raise ``noise``).
    """

    grids: dict[str, torch.Tensor]
    str_tokens: list[str]
    subject: list[int]
    answer: str
    clean_prob: float
    corrupt_prob: float
    samples: int
    noise: float
    window: int
    n_prompts: int = 1
    warning: str = ""

    @property
    def drop(self) -> float:
        """How much the corruption lowers p(answer): ``clean_prob − corrupt_prob``."""
        return self.clean_prob - self.corrupt_prob

    @property
    def title(self) -> str:
        what = f"{self.n_prompts} prompts" if self.n_prompts > 1 else repr("".join(self.str_tokens))
        return f"Causal tracing of {what}"

    def _answer(self) -> str:
        return repr(self.answer) if self.answer != "*" else "object"

    def marked_tokens(self) -> list[str]:
        """Tokens with the subject marked by ``*`` (as in the paper's figures)."""
        return [f"{t}*" if i in self.subject else t for i, t in enumerate(self.str_tokens)]

    def peak(self, kind: str) -> tuple[int, int, float]:
        """``(layer, position, effect)`` of the largest indirect effect of ``kind``."""
        g = self.grids[kind]
        flat = int(torch.nan_to_num(g, nan=-math.inf).argmax())
        layer, pos = divmod(flat, g.shape[1])
        return layer, pos, float(g[layer, pos])

    def summary(self) -> str:
        toks = self.marked_tokens()
        parts = []
        for kind in self.grids:
            layer, pos, v = self.peak(kind)
            parts.append(f"{kind}: peak {v:+.3f} at layer {layer}, {toks[pos]!r}")
        warn = f"WARNING: {self.warning}\n" if self.warning else ""
        return (warn + f"p({self._answer()}): clean {self.clean_prob:.3f}, corrupted {self.corrupt_prob:.3f} "
                f"(drop {self.drop:+.3f}; {self.samples} noise samples, σ={self.noise:.3f}, "
                f"{self.n_prompts} prompt(s)); " + "; ".join(parts))

    def to_frame(self) -> pd.DataFrame:
        """One row per (kind, layer, position)."""
        rows = []
        for kind, g in self.grids.items():
            for layer in range(g.shape[0]):
                for p, tok in enumerate(self.str_tokens):
                    rows.append({"kind": kind, "layer": layer, "position": p, "token": tok,
                                 "subject": p in self.subject, "effect": float(g[layer, p])})
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        """One heatmap per kind, tokens down and layers across, as in Meng et al.'s Figure 1."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        kinds = list(self.grids)
        fig = make_subplots(rows=1, cols=len(kinds), shared_yaxes=True, horizontal_spacing=0.08,
                            subplot_titles=[f"restoring {_LABEL[k]}" for k in kinds])
        y = [f"{i}:{t!r}" if self.n_prompts == 1 else t for i, t in enumerate(self.marked_tokens())]
        for c, kind in enumerate(kinds, 1):
            g = self.grids[kind].T  # [pos, layer]
            fig.add_trace(go.Heatmap(
                z=g.numpy(), x=list(range(g.shape[1])), y=y, colorscale=_COLORS[kind], zmin=0,
                zmax=max(float(torch.nan_to_num(g).max()), 1e-6),
                colorbar={"title": "IE", "x": fig.layout[f"xaxis{c if c > 1 else ''}"].domain[1] + 0.005,
                          "len": 0.8, "thickness": 10},
                hovertemplate="layer %{x}<br>%{y}<br>effect %{z:.3f}<extra>" + kind + "</extra>"), row=1, col=c)
            fig.update_xaxes(title_text=f"center of {self.window}-layer window" if kind != "hidden" else "layer",
                             row=1, col=c)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(title=f"{self.title}: p({self._answer()}) restored − corrupted",
                          height=max(320, 34 * len(y) + 140), width=max(700, 360 * len(kinds)))
        return fig


WEAK_DROP = 0.1
"""A corruption that lowers p(answer) by less than this fraction of its clean value is flagged."""


@torch.no_grad()
def embed_multiplier(model: HookedModel) -> float:
    """How much larger ``hook_embed`` is than the rows of ``W_E`` (Gemma: √d_model; most families: 1).

    Measured by running the embedding module on up to 4096 token ids spread over the vocabulary,
    so any multiplier the module applies is seen, whatever the family calls it.

    >>> embed_multiplier(model)
    1.0
    """
    W = model.W_E.detach()
    ids = torch.arange(0, W.shape[0], max(1, W.shape[0] // 4096), device=W.device)
    out = model.adapter.module(model.adapter.family.embed)(ids).float()
    out = out * float(model.adapter.family.embed_multiplier(model.model.config))  # applied outside it (Granite)
    out = model.adapter.module(model.adapter.family.embed_norm)(out) if model.adapter.family.embed_norm else out
    rows = W[ids].float()
    if torch.equal(out, rows):
        return 1.0
    return float(out.norm() / rows.norm().clamp_min(1e-30))


def noise_scale(model: HookedModel, factor: float = 3.0) -> float:
    """``factor`` × the standard deviation of the embeddings at ``hook_embed``, where the noise is added.

    The paper's ν = 3σ, with σ measured on the embedding matrix times any multiplier the
    embedding module applies (:func:`embed_multiplier`): Gemma's embeddings are √d_model larger
    than ``W_E``, and a noise scaled on ``W_E`` alone would corrupt nothing.

    >>> round(noise_scale(model), 3)
    0.407
    """
    return factor * float(model.W_E.detach().float().std()) * embed_multiplier(model)


def weak_corruption(clean_prob: float, corrupt_prob: float) -> str:
    """A warning when the corruption lowers p(answer) by less than :data:`WEAK_DROP` of its clean value, else ``""``.

    >>> weak_corruption(0.497, 0.491)[:44]
    'the corruption barely moves p(answer): clean'
    >>> weak_corruption(0.5, 0.05)
    ''
    """
    if clean_prob - corrupt_prob >= WEAK_DROP * clean_prob:
        return ""
    return (f"the corruption barely moves p(answer): clean {clean_prob:.3f}, corrupted {corrupt_prob:.3f}; "
            "the trace measures nothing (raise noise, or check the subject span)")


def subject_noise(model: HookedModel, samples: int, n_tokens: int, scale: float, seed: int = 0) -> torch.Tensor:
    """The noise added to the subject embeddings, ``[samples, n_tokens, d_model]`` (seeded, CPU generator).

    >>> subject_noise(model, samples=10, n_tokens=4, scale=0.4).shape
    torch.Size([10, 4, 576])
    """
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(samples, n_tokens, model.cfg.d_model, generator=g) * scale).to(model.device, model.dtype)


def noise_hook(subject: Sequence[int], noise: torch.Tensor):
    """Hook fn for ``hook_embed`` adding ``noise`` ``[batch, n_subject, d_model]`` at the ``subject`` positions."""
    idx = list(subject)

    def fn(value: torch.Tensor, hp: object) -> torch.Tensor:
        out = value.clone()
        out[:, idx] = out[:, idx] + noise.to(value.dtype)
        return out

    return fn


def _kinds(kind: str | Sequence[str]) -> list[str]:
    kinds = list(KINDS) if kind == "all" else [kind] if isinstance(kind, str) else list(kind)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise UncoverError(f"unknown kind {bad[0] if bad else kind!r}; valid: {', '.join(KINDS)}, all")
    return kinds


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """Layers restored together around ``layer`` (Meng et al.'s centring, clipped to the model).

    >>> window_layers(0, 10, 30), window_layers(12, 10, 30), window_layers(29, 10, 30)
    (range(0, 5), range(7, 17), range(24, 30))
    """
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


@torch.no_grad()
def causal_trace(
    model: HookedModel,
    prompt: str | torch.Tensor,
    subject: str | Sequence[int],
    answer: str | int | None = None,
    *,
    kind: str | Sequence[str] = "hidden",
    window: int = 10,
    samples: int = 10,
    noise: float = 3.0,
    seed: int = 0,
    max_rows: int = 2048,
) -> CausalTraceResult:
    """Trace where the model recalls ``answer`` for ``prompt`` by restoring clean states under subject noise.

    ``prompt``: text or token ids ``[1, pos]``. ``subject``: the subject string (found in a text
    ``prompt``) or its token positions. ``answer``: a
    single token (default: the model's top prediction on the clean prompt). ``kind``: ``hidden``,
    ``mlp``, ``attn``, ``all`` or a list. ``noise``: multiple of the embedding std. ``max_rows``:
    restorations per batched pass (memory bound).

    >>> r = causal_trace(model, "The Eiffel Tower is in the city of", "The Eiffel Tower", " Paris",
    ...                  kind="all")  # doctest: +SKIP
    >>> r.grids["mlp"].shape  # [layer, position], one grid per kind  # doctest: +SKIP
    torch.Size([30, 9])
    """
    from uncover.data.tasks import subject_positions

    kinds = _kinds(kind)
    if window < 1:
        raise UncoverError(f"window must be ≥ 1 layer, got {window}")
    if samples < 1:
        raise UncoverError(f"samples must be ≥ 1, got {samples}")
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not math.isfinite(noise) or noise <= 0:
        raise UncoverError(f"noise must be a finite number > 0 (a multiple of the embeddings' std), got {noise!r}")
    batch = model.tokenize(prompt)
    n_pos = batch.input_ids.shape[1]
    if isinstance(subject, str):
        if not isinstance(prompt, str):
            raise UncoverError("give the subject as token positions when the prompt is token ids")
        subj = subject_positions(model, prompt, subject)
    else:
        subj = sorted(set(subject))
    if not subj or subj[0] < 0 or subj[-1] >= n_pos:
        raise UncoverError(f"subject positions {subj} are outside the prompt's {n_pos} tokens")
    n = model.cfg.n_layers
    names = {"hidden": [act_name("resid_post", i) for i in range(n)],
             **{k: [act_name(SITES[k], i) for i in range(n)] for k in SITES}}
    clean_logits, calls = capture_calls(model, batch)
    if answer is None:
        answer = int(clean_logits[0, -1].argmax())
    (a_id,) = target_ids(model, [answer])
    clean_prob = float(clean_logits[0, -1].float().softmax(-1)[a_id])
    _, clean = model.run_with_cache(batch, names=sorted({x for k in kinds for x in names[k]}))

    scale = noise_scale(model, noise)
    eps = subject_noise(model, samples, len(subj), scale, seed)
    pre = [act_name("resid_pre", i) for i in range(n)] + [act_name("resid_post", n - 1)]
    with model.hooks([("hook_embed", noise_hook(subj, eps))]):
        bad_logits, bad = model.run_with_cache(batch.input_ids.expand(samples, -1), names=pre)
    corrupt = bad_logits[:, -1].float().softmax(-1)[:, a_id]  # [samples]
    corrupt_prob = float(corrupt.mean())

    positions = list(range(subj[0], n_pos))
    grids = {}
    for k in kinds:
        total = torch.zeros(n, n_pos)
        per_sample = n * len(positions)
        step = max(1, max_rows // per_sample)
        for s0 in range(0, samples, step):
            ss = list(range(s0, min(samples, s0 + step)))
            probs = _restore(model, calls, k, bad, clean, names[k], ss, positions, window, a_id)
            total[:, subj[0]:] += (probs - corrupt[ss].view(-1, 1, 1).cpu()).sum(0)
        grids[k] = total / samples
    return CausalTraceResult(grids=grids, str_tokens=model._strs(batch.input_ids[0].tolist()), subject=subj,
                             answer=model._strs([a_id])[0], clean_prob=clean_prob, corrupt_prob=corrupt_prob,
                             samples=samples, noise=scale, window=window,
                             warning=weak_corruption(clean_prob, corrupt_prob))


def _restore(model, calls, kind, bad, clean, names, ss, positions, window, a_id) -> torch.Tensor:
    """p(answer) ``[len(ss), layer, len(positions)]`` after each restoration, for noise samples ``ss``."""
    n = model.cfg.n_layers
    last = calls.batch.input_ids.shape[1] - 1
    pos_t = torch.tensor(positions, device=model.device)
    # row order: layer-major, then sample, then position; start layer decides the stage
    start = {layer: (layer + 1 if kind == "hidden" else window_layers(layer, window, n).start) for layer in range(n)}
    stages: dict[int, list[torch.Tensor]] = {}
    meta: list[tuple[int, int]] = []  # (stage start, restored layer) per block of rows, in stage order
    for layer in sorted(range(n), key=lambda x: start[x]):
        b = start[layer]
        if b >= n:  # hidden state after the last block: nothing left to run
            continue
        resid = bad[act_name("resid_pre", b)][ss]  # [S, pos, d]
        rows = resid.unsqueeze(1).repeat(1, len(positions), 1, 1)  # [S, P, pos, d]
        if kind == "hidden":
            src = clean[names[layer]][0, positions]  # [P, d]
            rows[:, torch.arange(len(positions)), pos_t] = src.unsqueeze(0).expand(len(ss), -1, -1)
        stages.setdefault(b, []).append(rows.flatten(0, 1))
        meta.append((b, layer))
    out = torch.empty(len(ss), n, len(positions))
    hooks = []
    if kind != "hidden":
        block = len(ss) * len(positions)
        row_pos = pos_t.repeat(len(ss))  # position restored by each row of a block
        for j in range(n):
            idx = [torch.arange(i * block, (i + 1) * block) for i, (_, layer) in enumerate(meta)
                   if j in window_layers(layer, window, n)]
            if idx:
                rows_j = torch.cat(idx).to(model.device)
                hooks.append((names[j], _restore_hook(rows_j, row_pos.repeat(len(idx)), clean[names[j]][0])))
    if stages:
        with model.hooks(hooks):
            logits = run_staged(model, calls, {b: torch.cat(v) for b, v in stages.items()}, last)
        p = logits.float().softmax(-1)[:, a_id].cpu().view(len(meta), len(ss), len(positions))
        for i, (_, layer) in enumerate(meta):
            out[:, layer] = p[i]
    if kind == "hidden":  # restoring the final hidden state: only the last token can matter, decode directly
        final = bad[act_name("resid_post", n - 1)][ss][:, last]  # [S, d]
        vec = final.unsqueeze(1).repeat(1, len(positions), 1)
        vec[:, [i for i, p in enumerate(positions) if p == last]] = clean[names[n - 1]][0, last]
        out[:, n - 1] = decode_resid(model, vec).float().softmax(-1)[..., a_id].cpu()
    return out


def _restore_hook(rows: torch.Tensor, pos: torch.Tensor, src: torch.Tensor):
    """Hook fn: batch row ``rows[k]`` gets the clean value ``src[pos[k]]`` at position ``pos[k]``."""

    def fn(value: torch.Tensor, hp: object) -> torch.Tensor:
        out = value.clone()
        out[rows, pos] = src[pos].to(value.dtype)
        return out

    return fn
