"""Causal tracing over many facts: Meng et al.'s six token categories and traces averaged over prompts.

Figure 2 of "Locating and Editing Factual Associations in GPT" (Meng et al. 2022) averages the indirect
effects of many facts by token category (first, middle and last subject token, first subsequent token,
further tokens, last token). Each single trace comes from :func:`uncover.patching.causal_tracing.causal_trace`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from uncover.core.errors import UncoverError
from uncover.patching.causal_tracing import CATEGORIES, CausalTraceResult, causal_trace, weak_corruption

if TYPE_CHECKING:
    from uncover.data.tasks import PromptPair, Task
    from uncover.hooks.hooked import HookedModel


def token_categories(subject: Sequence[int], n_pos: int) -> dict[str, list[int]]:
    """Positions of each of Meng et al.'s six token categories (tokens before the subject belong to none).

    The last token wins over the others; a one-token subject is both first and last subject token.

    >>> token_categories([1, 2, 3], 7)["middle subject tokens"], token_categories([1, 2, 3], 7)["further tokens"]
    ([2], [5])
    """
    s0, s1, last = subject[0], subject[-1], n_pos - 1
    cats = {
        "first subject token": [s0], "middle subject tokens": list(range(s0 + 1, s1)), "last subject token": [s1],
        "first subsequent token": [s1 + 1], "further tokens": list(range(s1 + 2, last)), "last token": [last],
    }
    return {k: [p for p in v if p <= last and (p < last or k == "last token")] for k, v in cats.items()}


def average_traces(results: Sequence[CausalTraceResult]) -> CausalTraceResult:
    """Average traces of several prompts over the six token categories (mean over prompts that have each).

    A category no prompt has (e.g. "further tokens" when every prompt ends right after the subject)
    is ``nan``.
    """
    if not results:
        raise UncoverError("no traces to average")
    kinds = list(results[0].grids)
    n = results[0].grids[kinds[0]].shape[0]
    grids = {}
    for k in kinds:
        sums, counts = torch.zeros(n, len(CATEGORIES)), torch.zeros(len(CATEGORIES))
        for r in results:
            cats = token_categories(r.subject, len(r.str_tokens))
            for c, name in enumerate(CATEGORIES):
                if cats[name]:
                    sums[:, c] += r.grids[k][:, cats[name]].mean(1)
                    counts[c] += 1
        grids[k] = sums / counts
    answers = sorted({r.answer for r in results})
    weak = sum(bool(r.warning) for r in results)
    clean = sum(r.clean_prob for r in results) / len(results)
    corrupt = sum(r.corrupt_prob for r in results) / len(results)
    warning = weak_corruption(clean, corrupt) or (
        f"the corruption barely moves p(answer) in {weak} of {len(results)} prompts" if weak else "")
    return CausalTraceResult(
        grids=grids, str_tokens=list(CATEGORIES), subject=[0, 1, 2], answer=answers[0] if len(answers) == 1 else "*",
        clean_prob=clean, corrupt_prob=corrupt, samples=results[0].samples,
        noise=results[0].noise, window=results[0].window, n_prompts=len(results), warning=warning)


def trace_facts(
    model: HookedModel, facts: Task | Sequence[PromptPair] | None = None, *, n: int | None = None, **kwargs
) -> CausalTraceResult:
    """Causal tracing averaged over facts (default: :func:`uncover.data.tasks.facts_for` of ``model``).

    Each pair's clean prompt is traced with its ``meta["subject"]`` and ``answer``; ``n`` keeps the
    first ``n`` facts; other keyword arguments go to :func:`causal_trace`.

    >>> r = trace_facts(model, n=4, kind="all")  # doctest: +SKIP
    >>> r.str_tokens[2]  # doctest: +SKIP
    'last subject token'
    """
    from uncover.data.tasks import facts_for

    if facts is None:
        facts = facts_for(model)
    pairs = list(facts.pairs if hasattr(facts, "pairs") else facts)[:n]
    if not pairs:
        raise UncoverError("no facts to trace (the model gets none right?)")
    missing = [p.clean for p in pairs if "subject" not in p.meta]
    if missing:
        raise UncoverError(f"pair {missing[0]!r} has no meta['subject']; causal tracing needs the subject span")
    return average_traces([causal_trace(model, p.clean, p.meta["subject"], p.answer, **kwargs) for p in pairs])
