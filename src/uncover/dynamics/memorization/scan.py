"""Extractable-memorization scan of a text with a pretrained model (Carlini et al. 2023):
which spans does the model reproduce verbatim, greedily, from the ``k`` tokens before them?"""

from __future__ import annotations

import codecs
import random
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch

from uncover.core.errors import UncoverError
from uncover.core.results import Result
from uncover.dynamics.memorization.metrics import greedy_continuation, match_lengths
from uncover.hooks.hooked import HookedModel
from uncover.hooks.tokens import special_prefix

MIT_LICENSE = (
    'Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated '
    'documentation files (the "Software"), to deal in the Software without restriction, including without '
    "limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the "
    "Software, and to permit persons to whom the Software is furnished to do so, subject to the following "
    "conditions:\n\nThe above copyright notice and this permission notice shall be included in all copies or "
    'substantial portions of the Software.\n\nTHE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, '
    "EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR "
    "PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, "
    "DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN "
    "CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."
)

LOREM_IPSUM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore "
    "magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo "
    "consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla "
    "pariatur. Excepteur sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt mollit anim id est "
    "laborum."
)


def _zen() -> str:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # importing ``this`` prints the Zen
        import this
    return codecs.decode(this.s, "rot13")


def shuffled_words(text: str, seed: int = 0) -> str:
    """The words of ``text`` in a seeded random order: a control no model has seen verbatim.

    >>> sorted(shuffled_words("a b c d").split()) == ["a", "b", "c", "d"]
    True
    """
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


TEXTS = {"mit": lambda: MIT_LICENSE, "zen": _zen, "lorem": lambda: LOREM_IPSUM,
         "mit-shuffled": lambda: shuffled_words(MIT_LICENSE), "lorem-shuffled": lambda: shuffled_words(LOREM_IPSUM)}
"""Built-in texts: the MIT license, the Zen of Python, Lorem ipsum, and shuffled-word controls."""


def builtin_text(name: str) -> str:
    """A built-in text by name; ``UncoverError`` names the valid ones.

    >>> builtin_text("mit")[:30]
    'Permission is hereby granted, '
    """
    if name not in TEXTS:
        raise UncoverError(f"unknown text {name!r}; valid: {', '.join(TEXTS)} (or pass a file)")
    return TEXTS[name]()


@dataclass
class ExtractionScanResult(Result):
    """Windows of a text: does the greedy continuation of ``k`` tokens reproduce the next ``suffix``?"""

    windows: pd.DataFrame
    """Per window: ``start`` (token index of the suffix), ``match_len``, ``exact``, ``target``, ``generated``."""
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    """Merged verbatim spans ``(first token, end token, text)`` of exact windows."""
    k: int = 32
    """Prefix length."""
    suffix: int = 16
    """Suffix length that must match exactly."""
    n_tokens: int = 0
    """Tokens in the text."""
    name: str = ""
    """Text name or path."""

    @property
    def title(self) -> str:
        return f"Extractable memorization scan{f' of {self.name}' if self.name else ''}"

    @property
    def extractable_fraction(self) -> float:
        """Fraction of windows whose suffix is reproduced exactly."""
        return float(self.windows.exact.mean()) if len(self.windows) else 0.0

    def summary(self) -> str:
        w = self.windows
        covered = sum(b - a for a, b, _ in self.spans)
        lines = [f"{self.title}: {int(w.exact.sum())}/{len(w)} windows k-extractable (k={self.k}, suffix "
                 f"{self.suffix}); mean match {w.match_len.mean():.1f} tokens; verbatim spans cover "
                 f"{covered}/{self.n_tokens} tokens"]
        for a, b, text in self.spans[:8]:
            lines.append(f"  tokens {a}-{b}: {text[:100]!r}")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        return self.windows

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(spans=[list(s) for s in self.spans], extractable_fraction=self.extractable_fraction)
        return d

    def plot(self) -> go.Figure:
        w = self.windows
        fig = go.Figure(go.Bar(x=w.start, y=w.match_len, marker_color=["#c0392b" if e else "#95a5a6" for e in w.exact],
                               hovertext=w.target, hovertemplate="token %{x}: %{y} matching<br>%{hovertext}"))
        fig.update_layout(title=self.title, xaxis_title="suffix start (token)", yaxis_title="tokens reproduced")
        return fig


def extraction_scan(model: HookedModel, text: str, k: int = 32, suffix: int = 16, stride: int = 8,
                    batch: int = 16, name: str = "") -> ExtractionScanResult:
    """Slide a window over ``text``: greedy-continue each ``k``-token prefix for ``suffix`` tokens.

    >>> r = extraction_scan(model, builtin_text("mit"), name="mit")  # doctest: +SKIP
    >>> r.extractable_fraction > 0.5  # doctest: +SKIP
    True
    """
    if k < 1 or suffix < 1 or stride < 1:
        raise UncoverError(f"k, suffix and stride must be positive (got {k}, {suffix}, {stride})")
    ids = torch.tensor(model.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    bos = torch.tensor(special_prefix(model.tokenizer), dtype=torch.long)  # what every prompt starts with
    starts = list(range(k, len(ids) - suffix + 1, stride))
    if not starts:
        raise UncoverError(f"the text has {len(ids)} tokens; need at least k + suffix = {k + suffix}")
    rows = []
    dev = model.device
    for i in range(0, len(starts), batch):
        st = starts[i: i + batch]
        prefix = torch.stack([torch.cat([bos, ids[s - k: s]]) for s in st]).to(dev)  # the tokenizer's BOS
        target = torch.stack([ids[s: s + suffix] for s in st]).to(dev)
        gen = greedy_continuation(model.model, prefix, suffix)
        ml = match_lengths(gen, target)
        for j, s in enumerate(st):
            rows.append({"start": s, "match_len": int(ml[j]), "exact": bool(ml[j] == suffix),
                         "target": model.tokenizer.decode(target[j]), "generated": model.tokenizer.decode(gen[j])})
    windows = pd.DataFrame(rows)
    spans: list[tuple[int, int, str]] = []
    for r in windows.itertuples():
        a, b = r.start, r.start + r.match_len
        if not r.exact:
            continue
        if spans and a <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(b, spans[-1][1]), "")
        else:
            spans.append((a, b, ""))
    spans = [(a, b, model.tokenizer.decode(ids[a:b])) for a, b, _ in spans]
    return ExtractionScanResult(windows, spans, k, suffix, len(ids), name)
