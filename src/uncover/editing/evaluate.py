"""CounterFact-style evaluation of edits (Meng et al. 2022, ROME, §4.2; Meng et al. 2023, MEMIT).

For each counterfactual (:mod:`uncover.data.counterfact`) the edit is applied to a model that
was reverted to its original weights, measured, and reverted again:

- **efficacy**: the new object beats the true one on the edit prompt (``log p(new) > log p(true)``);
- **paraphrase**: the same on the paraphrase prompts (generalisation);
- **neighbourhood**: the true object still beats the new one on prompts about other subjects
  that share the true object (specificity);
- **fluency**: the weighted bi-/tri-gram entropy of a greedy generation from the edit prompt
  (ROME's ``2/3·H₂ + 4/3·H₃``, averaged), before and after.

Object log-probabilities are summed over the object's tokens (teacher forcing).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.results import Result
from uncover.editing.base import Edit, EditError

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.data.counterfact import Counterfact
    from uncover.hooks.hooked import HookedModel

METRICS = ("efficacy", "paraphrase", "neighbourhood")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's fluency score: the weighted mean of the n-gram entropies (bits) of ``text``'s words.

    >>> ngram_entropy("a a a a a a")
    0.0
    >>> round(ngram_entropy("the cat sat on the mat today"), 3)
    2.41
    """
    words = text.lower().split()
    out = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        out.append(w * h)
    return sum(out) / len(out)


@torch.no_grad()
def object_logprobs(model: HookedModel, prompts: Sequence[str], objects: Sequence[str]) -> torch.Tensor:
    """``[len(prompts), len(objects)]`` log p(object | prompt), summed over the object's tokens.

    >>> object_logprobs(model, ["The capital of France is"], [" Paris", " Rome"]).round(decimals=2)
    tensor([[-0.2600, -7.5700]])
    """
    from uncover.editing.rome import pad

    tok = model.tokenizer
    obj_ids = [tok(o, add_special_tokens=False)["input_ids"] for o in objects]
    if any(not ids for ids in obj_ids):
        raise EditError(f"an object tokenises to nothing: {objects}")
    rows, spans = [], []
    for p in prompts:
        pids = tok(p)["input_ids"]
        for oids in obj_ids:
            rows.append(pids + oids)
            spans.append((len(pids), oids))
    ids, mask = pad(model, rows)
    logp = model.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().log_softmax(-1)
    out = torch.tensor([sum(float(logp[r, s - 1 + j, t]) for j, t in enumerate(o)) for r, (s, o) in enumerate(spans)])
    return out.view(len(prompts), len(objects))


def fact_rows(model: HookedModel, fact: Counterfact, stage: str, gen_tokens: int = 0) -> list[dict[str, Any]]:
    """One row per evaluated prompt of ``fact`` (and one fluency row when ``gen_tokens``), for ``stage``."""
    groups = {"efficacy": [fact.text], "paraphrase": list(fact.paraphrases), "neighbourhood": list(fact.neighbours)}
    prompts = [p for g in groups.values() for p in g]
    lp = object_logprobs(model, prompts, [fact.true, fact.new])
    rows, i = [], 0
    for metric, ps in groups.items():
        for p in ps:
            lt, ln = float(lp[i, 0]), float(lp[i, 1])
            ok = ln > lt if metric != "neighbourhood" else lt > ln
            rows.append({"subject": fact.subject, "new": fact.new, "true": fact.true, "stage": stage,
                         "metric": metric, "prompt": p, "success": bool(ok), "logp_true": lt, "logp_new": ln,
                         "value": float(ok)})
            i += 1
    if gen_tokens:
        text = model.generate(fact.text, gen_tokens)
        rows.append({"subject": fact.subject, "new": fact.new, "true": fact.true, "stage": stage, "metric": "fluency",
                     "prompt": fact.text, "success": None, "logp_true": None, "logp_new": None,
                     "value": ngram_entropy(text), "generation": text})
    return rows


@dataclass
class EditEval(Result):
    """CounterFact-style scores of an editing method over a set of counterfactuals.

    ``rows``: one per (fact, stage ``before``/``after``, metric, prompt) with ``success``
    (bool), ``logp_true``, ``logp_new`` and ``value`` (success as 0/1, or the fluency entropy).
    """

    method: str
    rows: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    edit_seconds: list[float] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.method.upper()} on {self.n_facts} counterfactuals"

    @property
    def n_facts(self) -> int:
        return len({r["subject"] + r["new"] for r in self.rows})

    def scores(self, stage: str = "after") -> dict[str, float]:
        """Mean of each metric over facts (each fact's prompts averaged first), for ``stage``."""
        df = self.to_frame()
        df = df[df["stage"] == stage]
        per_fact = df.groupby(["metric", "subject", "new"])["value"].mean()
        return {m: float(per_fact[m].mean()) for m in [*METRICS, "fluency"] if m in per_fact.index.levels[0]}

    def summary(self) -> str:
        a, b = self.scores("after"), self.scores("before")
        parts = [f"{m} {a[m]:.0%} (before {b[m]:.0%})" for m in METRICS if m in a]
        if "fluency" in a:
            parts.append(f"fluency {a['fluency']:.2f} bits (before {b['fluency']:.2f})")
        t = f"; {sum(self.edit_seconds) / len(self.edit_seconds):.1f} s per edit" if self.edit_seconds else ""
        return f"{self.method} over {self.n_facts} counterfactuals: " + ", ".join(parts) + t

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows)

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        a, b = self.scores("after"), self.scores("before")
        ms = [m for m in METRICS if m in a]
        fig = go.Figure([go.Bar(name="before", x=ms, y=[b[m] for m in ms]),
                         go.Bar(name="after edit", x=ms, y=[a[m] for m in ms])])
        fig.update_layout(title=self.title, yaxis_title="success rate", yaxis_range=[0, 1], barmode="group",
                          height=380)
        return fig


def evaluate_edits(
    model: HookedModel,
    edit_fn: Callable[[HookedModel, Counterfact], Edit],
    facts: Sequence[Counterfact] | None = None,
    *,
    method: str = "rome",
    gen_tokens: int = 20,
    progress: bool = True,
) -> EditEval:
    """Apply ``edit_fn(model, fact)`` to each fact on the original weights, score it, revert it.

    >>> from uncover.editing.rome import rome
    >>> ev = evaluate_edits(model, lambda m, f: rome(m, f.prompt, f.subject, f.new))  # doctest: +SKIP
    >>> ev.scores()["efficacy"]  # doctest: +SKIP
    1.0
    """
    from tqdm.auto import tqdm

    from uncover.data.counterfact import counterfacts

    facts = counterfacts() if facts is None else list(facts)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    times: list[float] = []
    for f in tqdm(facts, desc=f"{method} edits", disable=not progress, leave=False):
        rows += fact_rows(model, f, "before", gen_tokens)
        e = edit_fn(model, f)
        try:
            rows += fact_rows(model, f, "after", gen_tokens)
            times.append(e.seconds)
        finally:
            e.revert()
    return EditEval(method, rows, {"gen_tokens": gen_tokens}, time.perf_counter() - t0, times)


@dataclass
class EditReport(Result):
    """Before/after view of one edit: top next tokens and a greedy generation per prompt (what ``edit`` returns).

    The model stays edited; :meth:`revert` undoes it.
    """

    edit: Edit
    """The applied edit (its deltas are saved with the result; the model is not)."""
    rows: list[dict[str, Any]]
    """One per (prompt, stage): ``top`` (list of ``[token, prob]``), ``p_target``, ``generation``."""
    saved: str | None = None
    """The directory the edit was saved in (``delta.safetensors`` + ``edit.json``), if any."""

    @property
    def title(self) -> str:
        return self.edit.title

    def revert(self) -> None:
        """Undo the edit in the model, bit-exactly (:meth:`Edit.revert`). Idempotent.

        >>> uncover.run("edit", model, prompt="{} is in", subject="Paris", target=" Rome").revert()  # doctest: +SKIP
        """
        self.edit.revert()

    def summary(self) -> str:
        lines = [self.edit.summary()]
        for r in self.rows:
            top = ", ".join(f"{t!r} {p:.2f}" for t, p in r["top"][:3])
            lines.append(f"  [{r['stage']:>6}] {r['prompt']!r}: {top}; p(target) {r['p_target']:.3f}"
                         + (f"\n           → {r['generation']!r}" if r.get("generation") is not None else ""))
        if self.saved:
            lines.append(f"saved to {self.saved}")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([{**r, "top": [t for t, _ in r["top"]]} for r in self.rows])

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure([go.Bar(name=s, x=d["prompt"], y=d["p_target"]) for s, d in df.groupby("stage", sort=False)])
        fig.update_layout(title=f"{self.title}: p(target) before and after", yaxis_title="p(target)",
                          barmode="group", height=380)
        return fig


@torch.no_grad()
def prediction_rows(model: HookedModel, prompts: Sequence[str], target: str, stage: str, gen_tokens: int = 20,
                    k: int = 5) -> list[dict[str, Any]]:
    """Top-``k`` next tokens, p(first target token) and a greedy generation for each prompt."""
    t = model.tokenizer(target, add_special_tokens=False)["input_ids"][0]
    rows = []
    for p in prompts:
        probs = model(p)[0, -1].float().softmax(-1)
        v, i = probs.topk(k)
        rows.append({"stage": stage, "prompt": p, "top": [[model.tokenizer.decode([int(a)]), float(b)]
                                                           for a, b in zip(i, v)],
                     "p_target": float(probs[t]),
                     "generation": model.generate(p, gen_tokens) if gen_tokens else None})
    return rows
