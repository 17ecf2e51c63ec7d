"""DoLa against greedy decoding (Chuang et al. 2024): side-by-side generations and fact accuracy.

:func:`compare_decoding` generates each prompt greedily and with DoLa; :func:`dola_fact_accuracy`
scores the first answer token of every built-in fact (:func:`uncover.data.tasks.facts`) under
greedy decoding (argmax of the final layer) and under DoLa (argmax of the contrast scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.results import Result
from uncover.decoding.dola import Layers, candidate_layers, dola_generate, dola_scores

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.data.tasks import Task
    from uncover.hooks.hooked import HookedModel


@dataclass
class DecodingComparison(Result):
    """Greedy and DoLa continuations of each prompt."""

    rows: list[dict[str, Any]]
    """``{prompt, greedy, dola, premature_layers}`` per prompt."""
    candidates: list[int]
    alpha: float
    repetition_penalty: float

    @property
    def title(self) -> str:
        return "DoLa vs greedy decoding"

    def summary(self) -> str:
        out = [f"DoLa layers {self.candidates}, alpha {self.alpha:g}, repetition penalty {self.repetition_penalty:g}"]
        for r in self.rows:
            out += [f"prompt: {r['prompt']!r}", f"  greedy: {r['greedy']!r}", f"  dola:   {r['dola']!r}",
                    f"  premature layers: {r['premature_layers']}"]
        return "\n".join(out)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["prompt", "greedy", "dola", "premature_layers"])

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        f = self.to_frame()
        fig = go.Figure(go.Table(header={"values": ["prompt", "greedy", "DoLa"]},
                                 cells={"values": [f["prompt"], f["greedy"], f["dola"]], "align": "left"}))
        fig.update_layout(title=self.title)
        return fig


def compare_decoding(
    model: HookedModel, prompts: str | Sequence[str], max_new_tokens: int = 20, *, layers: Layers = "high",
    alpha: float = 0.1, repetition_penalty: float = 1.0,
) -> DecodingComparison:
    """Greedy and DoLa continuations of each prompt (the same repetition penalty for both).

    >>> print(compare_decoding(model, "The capital of France is", 8).summary())
    DoLa layers [15, 17, 19, 21, 23, 25, 27, 29], alpha 0.1, repetition penalty 1
    prompt: 'The capital of France is'
      greedy: ' Paris.\\n\\nThe answer is:'
      dola:   ' Paris.'
      premature layers: [15, 15, 15]
    """
    cand = candidate_layers(model, layers)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise UncoverError("no prompts given")
    rows = []
    for p in prompts:
        d = dola_generate(model, p, max_new_tokens, layers=cand, alpha=alpha, repetition_penalty=repetition_penalty)
        g = dola_generate(model, p, max_new_tokens, layers=cand, alpha=alpha, repetition_penalty=repetition_penalty,
                          contrastive=False)
        rows.append({"prompt": p, "greedy": g.text, "dola": d.text, "premature_layers": d.premature_layers})
    return DecodingComparison(rows, cand, alpha, repetition_penalty)


@dataclass
class DolaFacts(Result):
    """First-token accuracy on the fact set under greedy decoding and DoLa."""

    rows: list[dict[str, Any]]
    """``{prompt, answer, greedy, dola, greedy_correct, dola_correct, premature_layer}`` per fact."""
    candidates: list[int]
    alpha: float

    @property
    def title(self) -> str:
        return f"DoLa vs greedy: first-token fact accuracy (layers {self.candidates})"

    def accuracy(self, which: str = "dola") -> float:
        """Fraction correct for ``"dola"`` or ``"greedy"``."""
        return sum(r[f"{which}_correct"] for r in self.rows) / max(len(self.rows), 1)

    def summary(self) -> str:
        return (f"{len(self.rows)} facts: greedy {self.accuracy('greedy'):.1%}, DoLa {self.accuracy('dola'):.1%} "
                f"(layers {self.candidates}, alpha {self.alpha:g})")

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["prompt", "answer", "greedy", "dola", "greedy_correct",
                                               "dola_correct", "premature_layer"])

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        fig = go.Figure(go.Bar(x=["greedy", "DoLa"], y=[self.accuracy("greedy"), self.accuracy("dola")],
                               text=[f"{self.accuracy('greedy'):.1%}", f"{self.accuracy('dola'):.1%}"]))
        fig.update_layout(title=self.title, yaxis_title="first-token accuracy", yaxis_range=[0, 1])
        return fig


def dola_fact_accuracy(
    model: HookedModel, task: Task | None = None, *, layers: Layers = "high", alpha: float = 0.1
) -> DolaFacts:
    """Greedy vs DoLa first-token accuracy on the built-in facts (all of them, unfiltered).

    >>> r = dola_fact_accuracy(model)
    >>> round(r.accuracy("greedy"), 2), round(r.accuracy("dola"), 2)
    (0.85, 0.54)
    """
    from uncover.data.tasks import facts

    task = facts() if task is None else task
    cand = candidate_layers(model, layers)
    scores, chosen, _ = dola_scores(model, task.clean, cand, alpha)
    b = model.tokenize(task.clean)
    last = b.attention_mask.sum(1) - 1
    with torch.no_grad():
        final = model.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
    greedy = final[torch.arange(len(last)), last].argmax(-1).tolist()
    dola = scores.argmax(-1).tolist()
    rows = []
    for p, g, d, layer in zip(task.pairs, greedy, dola, chosen.tolist()):
        a = model.to_single_token(p.answer)
        rows.append({"prompt": p.clean, "answer": p.answer, "greedy": model._strs([g])[0],
                     "dola": model._strs([d])[0], "greedy_correct": g == a, "dola_correct": d == a,
                     "premature_layer": layer})
    return DolaFacts(rows, cand, alpha)
