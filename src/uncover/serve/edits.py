"""An applied edit's generalisation for the page: paraphrases and neighbourhood prompts before and after it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uncover.core.errors import UsageError

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def _prompts(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split("\n")
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise UsageError(f"{what}: give a list of prompts")
    out = [p for p in value if p.strip()]
    if len(out) > 32 or any(len(p) > 1000 for p in out):
        raise UsageError(f"{what}: at most 32 prompts of at most 1000 characters")
    return out


def edit_generalisation(
    model: HookedModel, report: Any, config: Any, paraphrases: Any = None, neighbours: Any = None, true: Any = None
) -> dict[str, Any]:
    """Paraphrases and neighbourhood prompts of an applied edit, scored before and after it.

    ``report``: the edit's ``EditReport`` (its edit is applied and is the latest weight change); ``config``: its
    ``EditConfig``. Without prompts, those of the embedded CounterFact fact with the same subject are used.
    ``true``: the object the model knew (default: the top prediction before the edit). Rows are
    :func:`uncover.editing.evaluate.fact_rows` (``logp_true``, ``logp_new``, ``success``: paraphrases should now
    give the new object, neighbours should keep the true one), with the edit taken off for ``before`` and put back
    (bit-exactly) for ``after``.

    >>> import uncover
    >>> from uncover.editing.ops import EditConfig
    >>> cfg = EditConfig(prompt="{} is in the city of", subject="The Eiffel Tower", target=" Rome", method="kn",
    ...                  layer=28, gen_tokens=0)
    >>> r = uncover.run("edit", model, **cfg.to_dict())
    >>> g = edit_generalisation(model, r, cfg)
    >>> r.revert()
    >>> g["true"], sorted(g["scores"]["before"])
    (' Paris', ['efficacy', 'neighbourhood', 'paraphrase'])
    """
    from uncover.data.counterfact import Counterfact, counterfacts
    from uncover.editing.evaluate import fact_rows

    req = config.request()
    known = next((f for f in counterfacts() if f.subject.lower() == req.subject.lower()), None)
    paras, neigh = _prompts(paraphrases, "paraphrases"), _prompts(neighbours, "neighbours")
    if not paras and not neigh:
        if known is None:
            raise UsageError(
                f"give paraphrases or neighbourhood prompts: the embedded CounterFact facts have none "
                f"for {req.subject!r}"
            )
        paras, neigh = list(known.paraphrases), list(known.neighbours)
    if true is None or true == "":
        before = next(r for r in report.rows if r["stage"] == "before")
        true = known.true if known is not None and known.true != req.target else before["top"][0][0]
    if not isinstance(true, str):
        raise UsageError(f"true: give the object the model knew as text, got {true!r}")
    if true == req.target:
        raise UsageError(f"true and the edit's target are the same ({true!r}); give the object the model knew")
    fact = Counterfact(req.subject, req.prompt, true, req.target, tuple(paras), tuple(neigh))
    e = report.edit
    e.revert()
    try:
        rows_before = fact_rows(model, fact, "before")
    finally:
        e.apply()  # back on, whatever happened
    rows = fact_rows(model, fact, "after")
    rows = [r for pair in zip(rows_before, rows) for r in pair]
    scores: dict[str, dict[str, float]] = {}
    for r in rows:
        scores.setdefault(r["stage"], {}).setdefault(r["metric"], []).append(r["value"])  # type: ignore[arg-type]
    return {
        "true": true,
        "new": req.target,
        "paraphrases": paras,
        "neighbours": neigh,
        "rows": rows,
        "scores": {st: {m: sum(v) / len(v) for m, v in ms.items()} for st, ms in scores.items()},
    }
