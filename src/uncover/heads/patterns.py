"""Attention pattern views: chosen heads' patterns over one prompt, as an interactive figure.

The view follows circuitsvis / TransformerLens tutorials (Elhage et al. 2021 read heads by
their patterns): query × key heatmaps with token labels and a head selector. Patterns come
from ``blocks.{l}.attn.hook_pattern``, which works under any attention implementation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name, head_label
from uncover.core.results import Result

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel

HeadSpec = str | tuple[int, int]

_SPEC = re.compile(r"^\s*(?:L(\d+)H(\d+)|(\d+)\.(\d+))\s*$", re.IGNORECASE)


def parse_head(spec: HeadSpec, n_layers: int | None = None, n_heads: int | None = None) -> tuple[int, int]:
    """``"5.2"``, ``"L5H2"`` or ``(5, 2)`` → ``(5, 2)``, checked against the model's shape when given.

    >>> parse_head("L5H2"), parse_head("3.1"), parse_head((0, 4))
    ((5, 2), (3, 1), (0, 4))
    """
    if isinstance(spec, tuple):
        layer, head = int(spec[0]), int(spec[1])
    else:
        m = _SPEC.match(spec)
        if m is None:
            raise UncoverError(f"bad head {spec!r}; write LAYER.HEAD (e.g. 5.2) or L5H2")
        layer, head = (int(g) for g in (m.group(1) or m.group(3), m.group(2) or m.group(4)))
    if n_layers is not None and not 0 <= layer < n_layers:
        raise UncoverError(f"layer {layer} out of range in head {spec!r}; valid layers: 0 .. {n_layers - 1}")
    if n_heads is not None and not 0 <= head < n_heads:
        raise UncoverError(f"head {head} out of range in {spec!r}; valid heads: 0 .. {n_heads - 1}")
    return layer, head


@dataclass
class AttentionPatterns(Result):
    """Attention patterns of chosen heads on one prompt.

    Attributes:
        prompt: the prompt text.
        str_tokens: its tokens.
        heads: ``[(layer, head), ...]``.
        patterns: ``[n_heads, q_pos, k_pos]`` attention weights (rows sum to 1).
        model_name: the model.
    """

    prompt: str
    str_tokens: list[str]
    heads: list[tuple[int, int]]
    patterns: torch.Tensor
    model_name: str = ""

    @property
    def title(self) -> str:
        return "Attention patterns" + (f" ({self.model_name})" if self.model_name else "")

    def summary(self) -> str:
        parts = []
        for (layer, head), p in zip(self.heads, self.patterns):
            q = p.shape[0] - 1
            k = int(p[q].argmax())
            parts.append(f"{head_label(layer, head)}: the last token attends most to {k}:{self.str_tokens[k]!r} "
                         f"({float(p[q, k]):.2f})")
        return f"{self.prompt!r}\n" + "\n".join(parts)

    def to_frame(self) -> pd.DataFrame:
        """One row per (head, query, key) with key ≤ query."""
        rows = []
        for (layer, head), p in zip(self.heads, self.patterns):
            for q in range(p.shape[0]):
                for k in range(q + 1):
                    rows.append({"layer": layer, "head": head, "query": q, "query_token": self.str_tokens[q],
                                 "key": k, "key_token": self.str_tokens[k], "weight": float(p[q, k])})
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        from uncover.heads.figures import pattern_figure

        return pattern_figure(self)


def attention_patterns(model: HookedModel, prompt: str | torch.Tensor, heads: Sequence[HeadSpec] | None = None,
                       *, layer: int | None = None) -> AttentionPatterns:
    """Patterns of ``heads`` (``["5.2", (3, 1), ...]``), or of every head of ``layer``, on ``prompt``.

    ``prompt``: text or ``[pos]`` token ids.

    >>> r = attention_patterns(model, "The cat sat. The cat", ["3.0", "L5H2"])
    >>> r.patterns.shape
    torch.Size([2, 6, 6])
    >>> r.to_html().startswith("<!DOCTYPE html>")
    True
    """
    c = model.cfg
    if heads is None:
        if layer is None:
            raise UncoverError("give heads (e.g. ['5.2', 'L3H1']) or a layer")
        parse_head((layer, 0), c.n_layers, c.n_heads)
        chosen = [(layer, h) for h in range(c.n_heads)]
    else:
        chosen = [parse_head(s, c.n_layers, c.n_heads) for s in heads]
    if not chosen:
        raise UncoverError("no heads given")
    ids = prompt if isinstance(prompt, torch.Tensor) else model.to_tokens(prompt)[0]
    if ids.dim() != 1:
        raise UncoverError(f"one prompt at a time: expected [pos] token ids, got {tuple(ids.shape)}")
    names = sorted({act_name("pattern", li) for li, _ in chosen})
    _, cache = model.run_with_cache(ids[None], names)
    pats = torch.stack([cache[act_name("pattern", li)][0, h] for li, h in chosen]).float().cpu()
    text = prompt if isinstance(prompt, str) else model.prompt_texts(ids[None])[0]
    return AttentionPatterns(text, model.to_str_tokens(ids), chosen, pats, model.name)
