"""Head detectors: previous-token, duplicate-token and induction scores per (layer, head).

Olsson et al. 2022, "In-context Learning and Induction Heads" (prefix matching on repeated
random tokens); Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"
(previous-token heads). Each score is the attention mass a head puts on a *target set* of
key positions, averaged over every (prompt, query position) whose target set is not empty:

- ``previous``: the key ``q - 1``;
- ``duplicate``: earlier keys holding the same token as the query (``k < q``, ``tok[k] = tok[q]``);
- ``induction``: keys right after an earlier occurrence of the query's token
  (``1 <= k <= q``, ``tok[k - 1] = tok[q]``, ``k - 1 < q``).

On ``data.tasks.repeated_tokens`` (BOS, then ``N`` random tokens twice) the duplicate target of a
second-repeat token at ``p`` is ``p - N`` and its induction target ``p - N + 1``; the same
definitions work on any text. Patterns are read through ``blocks.{l}.attn.hook_pattern`` and
reduced inside the hook, so no pattern of the whole model is kept in memory.

The copying score (:func:`copying_scores`) is read from the weights instead: the eigenvalues of each
head's full OV circuit (:mod:`uncover.heads.circuits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name, head_label
from uncover.core.results import Result
from uncover.heads.circuits import embed, head_weights, unembed

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel, Inputs

KINDS = ("previous", "duplicate", "induction")
"""Detector kinds computed from attention patterns (``copying`` comes from the weights: :func:`copying_scores`)."""

DESCRIPTIONS = {
    "previous": "attention from each token to the one before it",
    "duplicate": "attention to earlier copies of the current token",
    "induction": "attention to the token after an earlier copy of the current token",
    "copying": "Re(sum of eigenvalues) / sum of |eigenvalues| of the full OV circuit W_E W_V W_O W_U",
}


@dataclass
class HeadScores(Result):
    """One score per attention head.

    Attributes:
        kind: ``previous``, ``duplicate``, ``induction`` or ``copying``.
        scores: ``[layer, head]`` the score of each head.
        n_queries: number of (prompt, query position) pairs averaged (0 for weight-based scores).
        model_name: the model the scores come from.
    """

    kind: str
    scores: torch.Tensor
    n_queries: int = 0
    model_name: str = ""

    @property
    def title(self) -> str:
        return f"{self.kind.capitalize()} head scores" + (f" ({self.model_name})" if self.model_name else "")

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring heads as ``(layer, head, score)``, best first.

        >>> HeadScores("induction", torch.tensor([[0.25, 0.75], [0.5, 0.0]])).top(2)
        [(0, 1, 0.75), (1, 0, 0.5)]
        """
        flat = self.scores.flatten()
        order = torch.argsort(flat, descending=True, stable=True)[:k].tolist()
        n_heads = self.scores.shape[1]
        return [(i // n_heads, i % n_heads, float(flat[i])) for i in order]

    def summary(self) -> str:
        top = ", ".join(f"{head_label(layer, head)} {s:.3f}" for layer, head, s in self.top(5))
        over = f" over {self.n_queries} query positions" if self.n_queries else ""
        return f"{self.kind} score ({DESCRIPTIONS.get(self.kind, '')}){over}; top heads: {top}"

    def to_frame(self) -> pd.DataFrame:
        n_layers, n_heads = self.scores.shape
        rows = [{"layer": li, "head": h, "head_name": head_label(li, h), "score": float(self.scores[li, h])}
                for li in range(n_layers) for h in range(n_heads)]
        return pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)

    def plot(self) -> go.Figure:
        from uncover.heads.figures import head_heatmap

        return head_heatmap(self.scores, f"{self.title}: {DESCRIPTIONS.get(self.kind, '')}",
                            signed=self.kind == "copying", colorbar=self.kind)


def target_mask(tokens: torch.Tensor, kind: str, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Which keys are targets of each query: ``[batch, q_pos, k_pos]`` booleans.

    ``tokens``: ``[batch, pos]`` ids; ``attention_mask``: ``[batch, pos]`` (1 = real token).

    >>> target_mask(torch.tensor([[7, 3, 5, 3, 5]]), "induction")[0, 3].tolist()
    [False, False, True, False, False]
    >>> target_mask(torch.tensor([[7, 3, 5, 3, 5]]), "duplicate")[0, 4].nonzero().flatten().tolist()
    [2]
    """
    b, n = tokens.shape
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    if kind == "previous":
        m = (k == q - 1).expand(b, n, n)
    elif kind == "duplicate":
        m = (tokens[:, :, None] == tokens[:, None, :]) & (k < q)
    elif kind == "induction":
        prev = torch.full_like(tokens, -1)
        prev[:, 1:] = tokens[:, :-1]  # prev[k] = tok[k - 1]
        m = (tokens[:, :, None] == prev[:, None, :]) & (k >= 1) & (k <= q)
    else:
        raise UncoverError(f"unknown head detector {kind!r}; valid: {', '.join(KINDS)} (and copying)")
    m = m.to(tokens.device)
    if attention_mask is not None:
        real = attention_mask.bool()
        m = m & real[:, :, None] & real[:, None, :]
    return m


def _inputs(model: HookedModel, inputs: Inputs | None, n: int, seq_len: int, seed: int):
    from uncover.data.tasks import repeated_tokens

    if inputs is None:
        inputs = repeated_tokens(model, n=n, seq_len=seq_len, seed=seed)
    return model.tokenize(inputs)


def detect(
    model: HookedModel,
    inputs: Inputs | None = None,
    kinds: tuple[str, ...] | list[str] = KINDS,
    *,
    n: int = 8,
    seq_len: int = 20,
    seed: int = 0,
) -> dict[str, HeadScores]:
    """Pattern-based head scores of every head, all kinds from one forward pass.

    ``inputs``: prompts or ``[batch, pos]`` ids; default ``repeated_tokens(model, n, seq_len, seed)``.
    Returns ``{kind: HeadScores}``.

    >>> [(layer, head) for layer, head, _ in detect(model)["induction"].top(3)]
    [(18, 6), (17, 4), (17, 3)]
    """
    kinds = list(kinds)
    for kind in kinds:
        if kind not in KINDS:
            raise UncoverError(f"unknown head detector {kind!r}; valid: {', '.join(KINDS)}")
    batch = _inputs(model, inputs, n, seq_len, seed)
    masks = {k: target_mask(batch.input_ids, k, batch.attention_mask) for k in kinds}
    valid = {k: m.any(-1) for k, m in masks.items()}  # [batch, q]
    c = model.cfg
    sums = {k: torch.zeros(c.n_layers, c.n_heads, dtype=torch.float64) for k in kinds}

    def reducer(layer: int):
        def fn(pattern: torch.Tensor, hook) -> None:  # pattern: [batch, head, q, k]
            p = pattern.detach().float()
            for kind, m in masks.items():
                mass = torch.einsum("bhqk,bqk->bhq", p, m.to(p.dtype))
                sums[kind][layer] += (mass * valid[kind][:, None, :]).sum((0, 2)).double().cpu()

        return fn

    hooks = [(act_name("pattern", li), reducer(li)) for li in range(c.n_layers)]
    with torch.no_grad(), model.hooks(hooks):
        model(batch)
    out = {}
    for kind in kinds:
        count = int(valid[kind].sum())
        if count == 0:
            raise UncoverError(f"no query position of these prompts has a {kind} target; "
                               "use repeated tokens (the default) or text that repeats")
        out[kind] = HeadScores(kind, (sums[kind] / count).float(), count, model.name)
    return out


def copying_scores(model: HookedModel, dtype: torch.dtype = torch.float32) -> HeadScores:
    """Copying score ``Re(Σλ)/Σ|λ|`` of every head's full OV circuit, as :class:`HeadScores`.

    The ``d_head`` nonzero eigenvalues of ``W_E W_V W_O W_U`` are those of ``W_O (W_U W_E) W_V``
    (``[d_head, d_head]``), so no ``d_vocab × d_vocab`` matrix is formed; ``W_U W_E`` is
    ``[d_model, d_model]`` and computed once (eigenvalues in float64).

    >>> copying_scores(model).scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
    True
    """
    UE = unembed(model, dtype) @ embed(model, dtype)  # [d_model, d_model]
    c = model.cfg
    scores = torch.zeros(c.n_layers, c.n_heads)
    for layer in range(c.n_layers):
        hw = head_weights(model, layer, dtype)
        small = (hw.W_O @ UE @ hw.W_V).to(torch.float64)  # [head, d_head, d_head]
        ev = torch.linalg.eigvals(small)
        scores[layer] = (ev.sum(-1).real / ev.abs().sum(-1).clamp_min(1e-300)).float()
    return HeadScores("copying", scores, 0, model.name)


def head_scores(model: HookedModel, kind: str = "induction", inputs: Inputs | None = None, **kw) -> HeadScores:
    """One kind of head score (``previous``, ``duplicate``, ``induction`` or ``copying``).

    Pattern kinds take ``inputs``/``n``/``seq_len``/``seed`` as :func:`detect`; ``copying`` is
    computed from the weights (:func:`copying_scores`).

    >>> [(layer, head) for layer, head, _ in head_scores(model, "previous").top(3)]
    [(16, 0), (11, 1), (2, 1)]
    """
    if kind == "copying":
        return copying_scores(model)
    return detect(model, inputs, [kind], **kw)[kind]
