"""Contexts of a feature: the top-activating ones shown to the explainer, held-out ones to score with.

Token blocks are cut into contexts of ``ctx_len`` tokens (position 0 of each block, the attention
sink, is dropped, as SAE training does). A context *activates* when one of its tokens exceeds the
threshold ``mark x`` (the feature's largest activation on these tokens); those tokens are the ones
marked for the explainer and for fuzzing. As in EleutherAI's delphi (Paulo et al. 2024), the
explainer sees the ``n_explain`` most activating contexts, and scoring uses other contexts:
``n_holdout`` activating contexts drawn uniformly (seeded) from the rest of the activating ones
(so not only the strongest), and ``n_holdout`` non-activating contexts drawn uniformly from those
where no token reaches the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from uncover.core.errors import UncoverError


@dataclass
class Context:
    """A window of text and one feature's activation on each of its tokens.

    Attributes:
        tokens: the tokens as text.
        acts: the feature's activation per token.
        marked: per token, whether it is marked (``<<...>>``) when shown.
    """

    tokens: list[str]
    acts: list[float]
    marked: list[bool]

    @property
    def max_act(self) -> float:
        return max(self.acts) if self.acts else 0.0

    @property
    def text(self) -> str:
        """The plain text."""
        return "".join(self.tokens)


@dataclass
class FeatureContexts:
    """One feature's contexts.

    Attributes:
        explain: the top-activating contexts shown to the explainer (descending).
        active: held-out activating contexts (scoring's positives).
        inactive: held-out contexts where the feature stays under the threshold (detection's negatives).
        threshold: the activation above which a token counts as firing (and is marked).
        n_active: how many contexts activate in all.
    """

    explain: list[Context]
    active: list[Context]
    inactive: list[Context]
    threshold: float
    n_active: int


def cut_contexts(acts: torch.Tensor, ctx_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, windows)``: block positions ``[n_ctx, 2]`` (block, start) and acts ``[n_ctx, ctx_len, ...]``.

    ``acts``: ``[n_blocks, pos, ...]``; position 0 is dropped, then each block is cut into
    ``(pos - 1) // ctx_len`` consecutive windows.

    >>> idx, win = cut_contexts(torch.arange(10.0).view(1, 10), 3)
    >>> idx.tolist(), win.tolist()
    ([[0, 1], [0, 4], [0, 7]], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    """
    n, p = acts.shape[:2]
    per = (p - 1) // ctx_len
    if per < 1:
        raise UncoverError(f"blocks of {p} tokens hold no context of {ctx_len} tokens after the first; "
                           "use longer blocks or a shorter ctx_len")
    win = acts[:, 1 : 1 + per * ctx_len].reshape(n, per, ctx_len, *acts.shape[2:]).flatten(0, 1)
    starts = torch.arange(per) * ctx_len + 1
    idx = torch.stack([torch.arange(n).repeat_interleave(per), starts.repeat(n)], dim=1)
    return idx, win


def feature_contexts(acts: torch.Tensor, tokens: torch.Tensor, strs: dict[int, str], *, ctx_len: int = 16,
                     n_explain: int = 8, n_holdout: int = 8, mark: float = 0.25, seed: int = 0) -> FeatureContexts:
    """Split one feature's contexts into explaining, held-out activating and held-out non-activating ones.

    ``acts``: ``[n_blocks, pos]`` the feature's activations on ``tokens`` ``[n_blocks, pos]``; ``strs``: token
    id -> text. Raises ``UncoverError`` when the feature never fires, or fires in too few contexts to leave
    held-out ones.

    >>> toks = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8]])
    >>> acts = torch.tensor([[0.0, 0, 3, 0, 0, 0, 0, 1, 0]])
    >>> fc = feature_contexts(acts, toks, {i: f"t{i}" for i in range(9)}, ctx_len=2, n_explain=1, n_holdout=1)
    >>> fc.explain[0].tokens, fc.explain[0].marked, fc.active[0].tokens, fc.threshold
    (['t1', 't2'], [False, True], ['t7', 't8'], 0.75)
    """
    top = float(acts.max()) if acts.numel() else 0.0
    if top <= 0:
        raise UncoverError("the feature never fires on these tokens; choose another or stream more text")
    thr = mark * top
    idx, win = cut_contexts(acts, ctx_len)
    peak = win.max(dim=1).values
    on = (peak > thr).nonzero().flatten()
    on = on[peak[on].argsort(descending=True, stable=True)]
    off = (peak <= thr).nonzero().flatten()
    if len(on) < n_explain + 1:
        raise UncoverError(f"the feature fires in only {len(on)} contexts of {ctx_len} tokens, too few for "
                           f"{n_explain} to explain and at least one held out; stream more text or use fewer")
    if not len(off):
        raise UncoverError("the feature fires in every context: nothing to contrast it with")
    g = torch.Generator().manual_seed(seed)
    rest = on[n_explain:]
    held = rest[torch.randperm(len(rest), generator=g)[:n_holdout]].sort().values
    neg = off[torch.randperm(len(off), generator=g)[:n_holdout]].sort().values

    def context(i: int) -> Context:
        b, s = (int(v) for v in idx[i])
        ids = tokens[b, s : s + ctx_len].tolist()
        a = win[i].tolist()
        return Context([strs.get(t, f"<{t}>") for t in ids], a, [x > thr for x in a])

    return FeatureContexts([context(int(i)) for i in on[:n_explain]], [context(int(i)) for i in held],
                           [context(int(i)) for i in neg], thr, len(on))


def fuzzed(ctx: Context, seed: int) -> Context:
    """``ctx`` with as many tokens marked as it has firing tokens, chosen at random among the non-firing ones.

    Fuzzing's negatives (delphi): the same text with the wrong tokens marked.

    >>> c = fuzzed(Context(["a", "b", "c", "d"], [0.0, 2.0, 0.0, 0.0], [False, True, False, False]), 0)
    >>> sum(c.marked), c.marked[1]
    (1, False)
    """
    n = sum(ctx.marked)
    free = [i for i, m in enumerate(ctx.marked) if not m]
    g = torch.Generator().manual_seed(seed)
    pick = {free[int(i)] for i in torch.randperm(len(free), generator=g)[: min(n, len(free))]}
    return Context(list(ctx.tokens), list(ctx.acts), [i in pick for i in range(len(ctx.tokens))])
