"""Path patching (Wang et al. 2023, IOI; Goldowsky-Dill et al. 2023).

Activation patching asks what a component does through *every* route; path patching asks what
a *sender* head does through chosen *receivers* only. For each sender head ``s``:

1. run the clean prompt with ``s``'s output (``hook_z``) taken from the corrupt prompt and
   every other head frozen at its clean value (MLPs recomputed, or frozen with
   ``freeze_mlps=True``), and record what the receivers receive;
2. if the receivers are heads' query/key/value inputs, run the clean prompt again with only
   those inputs replaced by the values recorded in step 1, and read the metric. If the
   receiver is the final residual stream (``"logits"``), the metric of step 1 is the answer:
   the sender reaches the logits directly or through MLPs, not through other heads.

Fast: every sender of a layer is a batch row that starts at its layer from the cached clean
residual (``hooks/replay.py``), so the whole sweep of step 1 is one staged pass, and step 2
is one batched pass from the first receiver layer. Tests compare each cell with two plain
forward passes per sender.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name, head_label, input_label
from uncover.core.results import Result
from uncover.hooks import metrics as M
from uncover.hooks.replay import capture_calls, run_staged, run_staged_resid, stage_offsets

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel

Receiver = tuple[int, int, str]
"""``(layer, head, input)`` with input ``q``, ``k`` or ``v``; for ``k``/``v`` the head is a key-value head."""

_RECEIVER = re.compile(r"^L?(\d+)[.H](\d+)\.([qkv])$")


def parse_receiver(spec: str | Receiver) -> Receiver:
    """A receiver from ``"L9H6.q"`` (or ``"9.6.q"``) or a ``(layer, head, input)`` tuple.

    >>> parse_receiver("L9H6.q")
    (9, 6, 'q')
    >>> parse_receiver((3, 1, "v"))
    (3, 1, 'v')
    """
    if isinstance(spec, tuple):
        layer, head, which = spec
        if which not in ("q", "k", "v"):
            raise UncoverError(f"receiver input {which!r} is not one of q, k, v")
        return int(layer), int(head), which
    m = _RECEIVER.match(spec.strip())
    if not m:
        raise UncoverError(f"cannot read receiver {spec!r}; write it like L9H6.q (layer 9, head 6, query input), "
                           "L9H6.k or L9H6.v, or use 'logits'")
    return int(m[1]), int(m[2]), m[3]


@dataclass
class PathPatchResult(Result):
    """Effect of each sender head through the receivers.

    Attributes:
        grid: ``[layer, head]`` effect of patching the sender (NaN: not swept, e.g. at or after the
            last receiver's layer). Normalised: ``(patched - clean) / (clean - corrupt)``, so -1 means
            the path alone carries the whole clean-vs-corrupt difference and 0 means no effect;
            otherwise the raw change of the metric.
        receivers: ``["logits"]`` or receiver names such as ``"L9H6.q"``.
        clean_value, corrupt_value: the metric on the unpatched runs (mean over pairs).
        metric, normalised, freeze_mlps, n_pairs: how it was computed.
    """

    grid: torch.Tensor
    receivers: list[str]
    clean_value: float
    corrupt_value: float
    metric: str
    normalised: bool
    freeze_mlps: bool
    n_pairs: int

    @property
    def title(self) -> str:
        return f"Path patching: sender heads → {', '.join(self.receivers)}"

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` senders with the largest absolute effect, as ``(layer, head, effect)``."""
        g = torch.nan_to_num(self.grid, nan=0.0)
        idx = g.flatten().abs().argsort(descending=True)[:k]
        n_heads = self.grid.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads, float(g.flatten()[i])) for i in idx]

    def summary(self) -> str:
        unit = "of the clean-corrupt difference" if self.normalised else self.metric
        cells = ", ".join(f"{head_label(layer, h)} {v:+.3f}" for layer, h, v in self.top(6))
        return (f"{self.metric}: clean {self.clean_value:.3f}, corrupt {self.corrupt_value:.3f} "
                f"({self.n_pairs} pair{'s' if self.n_pairs != 1 else ''}); largest effects ({unit}): {cells}")

    def to_frame(self) -> pd.DataFrame:
        """One row per swept sender head."""
        rows = [{"layer": layer, "head": h, "effect": float(v)}
                for layer in range(self.grid.shape[0]) for h, v in enumerate(self.grid[layer].tolist())
                if not math.isnan(v)]
        return pd.DataFrame(rows, columns=["layer", "head", "effect"])

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        g = self.grid
        lim = float(torch.nan_to_num(g, nan=0.0).abs().max()) or 1.0
        fig = go.Figure(go.Heatmap(z=g.numpy(), colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
                                   colorbar={"title": "effect" if self.normalised else self.metric},
                                   hovertemplate="L%{y}H%{x}: %{z:.3f}<extra></extra>"))
        fig.update_layout(title=self.title, xaxis_title="sender head", yaxis_title="sender layer",
                          height=max(420, 16 * g.shape[0]))
        return fig


def path_patching(
    model: HookedModel,
    clean: str | Sequence[str],
    corrupt: str | Sequence[str],
    answer: str | int | Sequence[str | int],
    wrong: str | int | Sequence[str | int],
    *,
    receivers: str | Sequence[str | Receiver] = "logits",
    receiver_positions: Sequence[int] | None = None,
    senders: Sequence[tuple[int, int]] | None = None,
    metric: str = "logit_diff",
    freeze_mlps: bool = False,
    normalise: bool = True,
) -> PathPatchResult:
    """Patch each sender head's path into ``receivers`` with its corrupt output, one sender at a time.

    ``clean``/``corrupt``: one prompt pair or equal-length lists of pairs (each pair of equal token
    length; effects are averaged over pairs). ``receivers``: ``"logits"`` (the final residual) or
    heads' inputs such as ``["L9H6.q", "L9H9.q"]`` (``k``/``v`` name key-value heads).
    ``receiver_positions``: positions whose receiver inputs are patched (default all; ``[-1]`` is
    the last token, as for IOI's name movers). ``senders``: ``(layer, head)`` pairs to sweep
    (default every head before the last receiver's layer).

    >>> r = path_patching(model, "When Mary and John went to the store, John gave a drink to",
    ...     "When Alice and Bob went to the store, Sam gave a drink to", " Mary", " John",
    ...     senders=[(layer, h) for layer in (23, 29) for h in range(9)])  # default: every head (slower)
    >>> [(layer, head, round(effect, 2)) for layer, head, effect in r.top(2)]
    [(23, 3, -0.42), (29, 1, -0.23)]
    """
    from uncover.hooks.decode import target_ids

    cleans = [clean] if isinstance(clean, str) else list(clean)
    corrupts = [corrupt] if isinstance(corrupt, str) else list(corrupt)
    answers = [answer] * len(cleans) if isinstance(answer, (str, int)) else list(answer)
    wrongs = [wrong] * len(cleans) if isinstance(wrong, (str, int)) else list(wrong)
    if not cleans or not (len(cleans) == len(corrupts) == len(answers) == len(wrongs)):
        raise UncoverError(f"need as many clean ({len(cleans)}) as corrupt ({len(corrupts)}) prompts, answers "
                           f"({len(answers)}) and wrong tokens ({len(wrongs)}), at least one")
    cfg = model.cfg
    to_logits = isinstance(receivers, str)
    if to_logits and receivers != "logits":
        recv = [parse_receiver(receivers)]
        to_logits = False
    else:
        recv = [] if to_logits else [parse_receiver(r) for r in receivers]
    if not to_logits and not recv:
        raise UncoverError("no receivers given; use 'logits' or heads' inputs such as L9H6.q")
    for layer, h, which in recv:
        n = cfg.n_heads if which == "q" else cfg.n_kv_heads
        if not (0 <= layer < cfg.n_layers and 0 <= h < n):
            kind = "query" if which == "q" else "key-value"
            raise UncoverError(f"receiver {input_label(head_label(layer, h), which)} is out of range: "
                               f"layers 0..{cfg.n_layers - 1}, {kind} heads 0..{n - 1}")
    last = cfg.n_layers if to_logits else max(r[0] for r in recv)
    swept = sorted(set(senders)) if senders is not None else [(la, h) for la in range(last)
                                                               for h in range(cfg.n_heads)]
    for la, h in swept:
        if not (0 <= la < cfg.n_layers and 0 <= h < cfg.n_heads):
            raise UncoverError(f"sender {head_label(la, h)} is out of range: layers 0..{cfg.n_layers - 1}, "
                               f"heads 0..{cfg.n_heads - 1}")
    swept = [s for s in swept if s[0] < last]
    if not swept:
        raise UncoverError("no sender head lies before the receivers' layer, so no path exists")

    total = torch.zeros(len(swept), dtype=torch.float64)
    clean_sum = corrupt_sum = 0.0
    for c, x, a, w in zip(cleans, corrupts, answers, wrongs):
        a_id, w_id = target_ids(model, [a, w])
        fn = M.make_metric(metric, a_id, w_id)
        vals, cv, xv = _one_pair(model, c, x, fn, swept, recv, receiver_positions, freeze_mlps)
        total += vals.double()
        clean_sum += cv
        corrupt_sum += xv
    n = len(cleans)
    clean_value, corrupt_value = clean_sum / n, corrupt_sum / n
    effect = total / n - clean_value
    if normalise:
        span = clean_value - corrupt_value
        if abs(span) < 1e-9:
            raise UncoverError("clean and corrupt runs give the same metric; nothing to attribute")
        effect = effect / span
    grid = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
    for (la, h), v in zip(swept, effect.tolist()):
        grid[la, h] = v
    names = ["logits"] if to_logits else [input_label(head_label(la, h), w) for la, h, w in recv]
    return PathPatchResult(grid=grid, receivers=names, clean_value=clean_value, corrupt_value=corrupt_value,
                           metric=metric, normalised=normalise, freeze_mlps=freeze_mlps, n_pairs=n)


def _one_pair(
    model: HookedModel,
    clean: str | torch.Tensor,
    corrupt: str | torch.Tensor,
    fn: M.Metric,
    swept: list[tuple[int, int]],
    recv: list[Receiver],
    rpos: Sequence[int] | None,
    freeze_mlps: bool,
) -> tuple[torch.Tensor, float, float]:
    """Metric per swept sender ``[senders]`` (in ``swept`` order), and the clean and corrupt metric."""
    n = model.cfg.n_layers
    clean_b, corrupt_b = model.tokenize(clean), model.tokenize(corrupt)
    if clean_b.input_ids.shape != corrupt_b.input_ids.shape:
        raise UncoverError(f"clean has {clean_b.input_ids.shape[1]} tokens but corrupt has "
                           f"{corrupt_b.input_ids.shape[1]}; path patching needs equal lengths")
    resid = [act_name("resid_pre", i) for i in range(n)]
    z = [act_name("z", i) for i in range(n)]
    mlp = [act_name("mlp_out", i) for i in range(n)] if freeze_mlps else []
    clean_logits, calls = capture_calls(model, clean_b)
    _, cc = model.run_with_cache(clean_b, names=resid + z + mlp)
    corrupt_logits, xc = model.run_with_cache(corrupt_b, names=z)
    last = clean_b.input_ids.shape[1] - 1
    clean_value, corrupt_value = float(fn(clean_logits[:, last])[0]), float(fn(corrupt_logits[:, last])[0])

    by_layer: dict[int, list[int]] = {}
    for la, h in swept:
        by_layer.setdefault(la, []).append(h)
    offsets = stage_offsets({la: len(hs) for la, hs in by_layer.items()})
    order = [(la, h) for la in sorted(by_layer) for h in by_layer[la]]  # batch row order
    stages = {la: cc[resid[la]].expand(len(hs), -1, -1).clone() for la, hs in by_layer.items()}
    hooks = [(z[j], _freeze_z(cc[z[j]], xc[z[j]], by_layer.get(j, []), offsets.get(j, 0)))
             for j in range(min(by_layer), n)]
    hooks += [(mlp[j], _freeze(cc[mlp[j]])) for j in range(min(by_layer), n)] if freeze_mlps else []

    if not recv:
        with model.hooks(hooks):
            values = fn(run_staged(model, calls, stages, last)).float().cpu()
    else:
        sites = sorted({(la, w) for la, _, w in recv})
        names = {s: act_name(s[1], s[0]) for s in sites}
        seen: dict[tuple[int, str], torch.Tensor] = {}
        record = [(names[s], _record(seen, s)) for s in sites]
        stop = max(la for la, _ in sites) + 1
        with model.hooks(hooks + record):
            run_staged_resid(model, calls, stages, stop)
        first = min(la for la, _ in sites)
        rows = len(order)
        start = {first: cc[resid[first]].expand(rows, -1, -1).clone()}
        heads = {s: sorted({h for la, h, w in recv if (la, w) == s}) for s in sites}
        patch = [(names[s], _patch_heads(seen[s], heads[s], rpos)) for s in sites]
        with model.hooks(patch):
            values = fn(run_staged(model, calls, start, last)).float().cpu()
    # batch rows are in ``order``; report in ``swept`` order
    pos = {s: k for k, s in enumerate(order)}
    return values[[pos[s] for s in swept]], clean_value, corrupt_value


def _freeze_z(clean: torch.Tensor, corrupt: torch.Tensor, heads: list[int], offset: int):
    """Hook on ``hook_z`` of one layer: every row gets the clean value, except the rows sending from this
    layer, which get the corrupt output of their own head."""

    def fn(value: torch.Tensor, hp: object) -> torch.Tensor:
        out = clean.expand(value.shape[0], *clean.shape[1:]).clone()
        for j, h in enumerate(heads):
            out[offset + j, :, h] = corrupt[0, :, h]
        return out

    return fn


def _freeze(clean: torch.Tensor):
    def fn(value: torch.Tensor, hp: object) -> torch.Tensor:
        return clean.expand(value.shape[0], *clean.shape[1:]).clone()

    return fn


def _record(seen: dict, key: tuple[int, str]):
    def fn(value: torch.Tensor, hp: object) -> None:
        seen[key] = value.detach().clone()

    return fn


def _patch_heads(recorded: torch.Tensor, heads: list[int], rpos: Sequence[int] | None):
    """Hook on a receiver's ``hook_q|k|v``: the first rows (those whose sender came before this layer) take
    the values recorded in step 1 at ``heads`` and ``rpos``; later rows stay clean."""
    present = recorded.shape[0]

    def fn(value: torch.Tensor, hp: object) -> torch.Tensor:
        out = value.clone()
        pos = slice(None) if rpos is None else list(rpos)
        for h in heads:
            out[:present, pos, h] = recorded[:, pos, h]
        return out

    return fn
