"""Top-activating contexts of MLP neurons or residual directions, streamed over a corpus.

The classic first look at a unit (Olah et al. 2017; Geva et al. 2021 "Transformer
feed-forward layers are key-value memories" read the keys this way): run a corpus through
the model and keep, for every unit, the ``k`` token positions where it fires most.
Memory stays bounded for any corpus size: :class:`StreamingTopK` keeps a running
``[k, units]`` top-k (merged with each batch by one ``topk``), the activation window
around each kept position, and a uniform sample of all activations (bottom-``s`` of
random keys) for histograms, plus running counts for the firing density.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.results import Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel


class _Stop(Exception):
    """Raised by a capture hook to skip the rest of the forward pass."""


def hook_batches(model: HookedModel, hook: str, blocks: torch.Tensor, batch_size: int = 8) -> Iterator[torch.Tensor]:
    """Yield the value at ``hook`` for consecutive batches of token ``blocks`` ``[n, pos]``.

    Each value is ``[batch, pos, d]`` float32 (per-head hooks flattened to one axis); the
    forward pass stops right after ``hook`` (the later blocks are not run).

    >>> vals = list(hook_batches(model, "blocks.3.hook_resid_post", blocks[:4], 2))  # doctest: +SKIP
    >>> len(vals), vals[0].shape  # doctest: +SKIP
    (2, torch.Size([2, 64, 576]))
    """
    model.site(hook)
    got: dict[str, torch.Tensor] = {}

    def grab(v: torch.Tensor, hp: Any) -> None:
        got["v"] = v.detach()
        raise _Stop

    for i in range(0, len(blocks), batch_size):
        with torch.no_grad(), model.hooks([(hook, grab)]):
            try:
                model(blocks[i : i + batch_size].to(model.device))
            except _Stop:
                pass
        v = got.pop("v")
        yield v.reshape(v.shape[0], v.shape[1], -1).float().cpu()


class StreamingTopK:
    """Running top-``k`` positions per unit of ``[batch, pos, units]`` activations.

    Positions are numbered ``row * pos + p`` over all rows seen. ``window = (before, after)``
    keeps the unit's activations around each kept position (0 outside the row).

    >>> s = StreamingTopK(k=2, n_units=1)
    >>> s.update(torch.tensor([[[1.0], [5.0], [3.0]]]))
    >>> s.update(torch.tensor([[[4.0], [0.0], [2.0]]]))
    >>> s.values[:, 0].tolist(), s.index[:, 0].tolist()
    ([5.0, 4.0], [1, 3])
    """

    def __init__(self, k: int, n_units: int, window: tuple[int, int] = (0, 0), sample: int = 0, seed: int = 0):
        self.k, self.window, self.sample_size = k, window, sample
        w = window[0] + window[1] + 1
        self.values = torch.full((0, n_units), float("-inf"))
        self.index = torch.zeros((0, n_units), dtype=torch.long)
        self.windows = torch.zeros((0, n_units, w))
        self.sample = torch.zeros((0, n_units))
        self._keys = torch.zeros(0)
        self._gen = torch.Generator().manual_seed(seed)
        self.rows = 0
        self.count = 0
        self.positive = torch.zeros(n_units, dtype=torch.long)
        self.total = torch.zeros(n_units, dtype=torch.float64)

    def update(self, acts: torch.Tensor) -> None:
        """Merge one batch ``[batch, pos, units]``."""
        b, p, n = acts.shape
        flat = acts.reshape(b * p, n)
        ids = self.rows * p + torch.arange(b * p)
        cat_v = torch.cat([self.values, flat])
        top = cat_v.topk(min(self.k, len(cat_v)), dim=0)
        old = len(self.values)
        is_new = top.indices >= old
        new_i = (top.indices - old).clamp(min=0)  # [k, n] row of flat
        index = torch.where(is_new, ids[new_i], self.index.gather(0, top.indices.clamp(max=max(old - 1, 0)))
                            if old else ids[new_i])
        # activation windows of the newly kept positions, gathered from this batch
        before, after = self.window
        padded = torch.nn.functional.pad(acts, (0, 0, before, after))  # [b, p + w - 1, n]
        offs = torch.arange(before + after + 1)
        r, q = new_i // p, new_i % p
        units = torch.arange(n).expand_as(r)
        win_new = padded[r[..., None], q[..., None] + offs, units[..., None]]  # [k, n, w]
        if old:
            win_old = self.windows.gather(0, top.indices.clamp(max=old - 1)[..., None].expand(-1, -1, len(offs)))
            win_new = torch.where(is_new[..., None], win_new, win_old)
        self.values, self.index, self.windows = top.values, index, win_new
        self.rows += b
        self.count += b * p
        self.positive += (flat > 0).sum(0)
        self.total += flat.double().sum(0)
        if self.sample_size:
            keys = torch.rand(b * p, generator=self._gen)
            all_keys = torch.cat([self._keys, keys])
            keep = all_keys.topk(min(self.sample_size, len(all_keys)), largest=False).indices
            self.sample = torch.cat([self.sample, flat])[keep]
            self._keys = all_keys[keep]


@dataclass
class TopActivations(Result):
    """Top-activating contexts of units at one hook.

    Attributes:
        hook: the hook name.
        units: a label per unit (neuron index or ``dir{i}``).
        values: ``[units, k]`` top activations, descending.
        block, pos: ``[units, k]`` where each one is (row of ``tokens`` and position).
        windows: ``[units, k, before + 1 + after]`` the unit's activations around it.
        tokens: ``[n_blocks, pos]`` the token ids streamed.
        sample: ``[s, units]`` a uniform sample of all activations (for histograms).
        density: ``[units]`` fraction of positions where the unit is > 0.
        mean: ``[units]`` mean activation.
        window: ``(before, after)``.
        strs: token id -> display string, for the ids in the contexts.
    """

    hook: str
    units: list[str]
    values: torch.Tensor
    block: torch.Tensor
    pos: torch.Tensor
    windows: torch.Tensor
    tokens: torch.Tensor
    sample: torch.Tensor
    density: torch.Tensor
    mean: torch.Tensor
    window: tuple[int, int]
    strs: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def title(self) -> str:
        return f"Top-activating contexts at {self.hook}"

    def context(self, unit: int, rank: int) -> tuple[list[str], list[float], int]:
        """``(tokens, activations, index of the top token)`` of one kept context."""
        b, p = int(self.block[unit, rank]), int(self.pos[unit, rank])
        before, after = self.window
        lo, hi = max(0, p - before), min(self.tokens.shape[1], p + after + 1)
        ids = self.tokens[b, lo:hi].tolist()
        acts = self.windows[unit, rank, before - (p - lo) : before + (hi - p)].tolist()
        return [self.strs.get(i, f"<{i}>") for i in ids], acts, p - lo

    def summary(self) -> str:
        lines = [f"{len(self.units)} unit(s) at {self.hook} over {self.tokens.numel()} tokens"]
        for u in range(min(len(self.units), 8)):
            toks, _, m = self.context(u, 0)
            ctx = "".join(toks[:m]) + "[[" + toks[m] + "]]" + "".join(toks[m + 1 :])
            lines.append(f"  {self.units[u]}: max {float(self.values[u, 0]):.3g}, density "
                         f"{float(self.density[u]):.3f}: {ctx!r}")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for u, name in enumerate(self.units):
            for r in range(self.values.shape[1]):
                toks, _, m = self.context(u, r)
                rows.append({"unit": name, "rank": r, "activation": float(self.values[u, r]),
                             "block": int(self.block[u, r]), "pos": int(self.pos[u, r]), "token": toks[m],
                             "context": "".join(toks)})
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        fig = go.Figure()
        for u in range(min(len(self.units), 6)):
            fig.add_trace(go.Histogram(x=self.sample[:, u].tolist(), name=self.units[u], opacity=0.6, nbinsx=60))
        fig.update_layout(barmode="overlay", title=f"Activation histograms at {self.hook} (uniform sample)",
                          xaxis_title="activation", yaxis_title="count", yaxis_type="log")
        return fig

    def contexts_section(self, max_units: int = 20) -> str:
        """HTML: each unit's top contexts with token highlighting."""
        from uncover.neurons.highlight import contexts_html

        parts = []
        for u in range(min(len(self.units), max_units)):
            rows = []
            for r in range(self.values.shape[1]):
                toks, acts, m = self.context(u, r)
                rows.append((f"#{r}", toks, acts, m, float(self.values[u, r])))
            parts.append(f"<h3>{self.units[u]}</h3>" + contexts_html(rows, float(self.values[u, 0])))
        return "\n".join(parts)

    def html_sections(self) -> list[Any]:
        """The figure and table, then each unit's top contexts with token highlighting."""
        from uncover.report.html import Section

        return [Section.from_result(self), Section("Top contexts", self.contexts_section())]


def resolve_hook(hook: str | int) -> str:
    """An int ``l`` means ``blocks.{l}.mlp.hook_post`` (the neurons of layer ``l``).

    >>> resolve_hook(3), resolve_hook("blocks.2.hook_resid_post")
    ('blocks.3.mlp.hook_post', 'blocks.2.hook_resid_post')
    """
    return f"blocks.{hook}.mlp.hook_post" if isinstance(hook, int) else hook


def top_activations(
    model: HookedModel,
    hook: str | int,
    units: Sequence[int] | None = None,
    *,
    direction: torch.Tensor | None = None,
    texts: Sequence[str] | None = None,
    tokens: torch.Tensor | None = None,
    k: int = 10,
    block_len: int = 64,
    max_blocks: int | None = 256,
    batch_size: int = 8,
    window: tuple[int, int] = (12, 4),
    sample: int = 4096,
    seed: int = 0,
) -> TopActivations:
    """The ``k`` top-activating token positions of each unit, streamed over a corpus.

    ``hook``: a hook name, or an int ``l`` for the MLP neurons ``blocks.{l}.mlp.hook_post``.
    ``units``: indices into the hook's last axis (default: all), or ``direction``: a
    ``[d]`` or ``[n_dirs, d]`` tensor read off by dot product (e.g. a residual direction).
    The corpus is ``tokens`` (``[n_blocks, pos]``), else ``texts``, else the embedded
    corpus, cut into ``block_len`` blocks (first ``max_blocks``; ``None`` for all).

    >>> r = top_activations(model, 10, units=[5, 7], k=5)  # doctest: +SKIP
    >>> r.values.shape  # doctest: +SKIP
    torch.Size([2, 5])
    """
    from uncover.data.corpus import token_blocks

    hook = resolve_hook(hook)
    model.site(hook)
    if k < 1:
        raise UncoverError(f"k must be positive, not {k}")
    if tokens is None:
        tokens = token_blocks(model, texts, block_len=block_len)
    if max_blocks is not None:
        tokens = tokens[:max_blocks]
    d = None
    if direction is not None:
        d = direction.float().reshape(-1, direction.shape[-1]).T.contiguous()  # [d, n_dirs]
        labels = [f"dir{i}" for i in range(d.shape[1])]
    stream = None
    for acts in hook_batches(model, hook, tokens, batch_size):
        if d is not None:
            if acts.shape[-1] != d.shape[0]:
                raise UncoverError(f"direction has {d.shape[0]} dims but {hook} has {acts.shape[-1]}")
            acts = acts @ d
        elif units is not None:
            bad = [u for u in units if not -acts.shape[-1] <= u < acts.shape[-1]]
            if bad:
                raise UncoverError(f"unit(s) {bad} out of range; {hook} has {acts.shape[-1]} (0..{acts.shape[-1] - 1})")
            acts = acts[..., list(units)]
        if stream is None:
            stream = StreamingTopK(k, acts.shape[-1], window, sample, seed)
        stream.update(acts)
    assert stream is not None
    if d is None:
        pre = f"L{hook.split('.')[1]}N" if hook.endswith("mlp.hook_post") else "u"
        labels = [f"{pre}{u}" for u in (units if units is not None else range(stream.values.shape[1]))]
    p = tokens.shape[1]
    ids = sorted(set(tokens.unique().tolist()))
    strs = dict(zip(ids, model._strs(ids)))
    return TopActivations(hook, labels, stream.values.T.contiguous(), (stream.index // p).T.contiguous(),
                          (stream.index % p).T.contiguous(), stream.windows.transpose(0, 1).contiguous(), tokens,
                          stream.sample, stream.positive.float() / max(stream.count, 1),
                          (stream.total / max(stream.count, 1)).float(), window, strs)
