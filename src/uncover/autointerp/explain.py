"""Explain features from their top-activating contexts, and score the explanations (offline auto-interpretability).

The pipeline of Bills et al. 2023 and EleutherAI's delphi (Paulo et al. 2024, "Automatically
Interpreting Millions of Features in Large Language Models"), with a local model in both roles:

1. stream token blocks through the model and keep each feature's activations
   (:func:`~uncover.autointerp.sources.feature_activations`);
2. cut them into contexts; the explainer sees the top-activating ones with the firing tokens
   marked (:func:`~uncover.autointerp.examples.feature_contexts`);
3. score each explanation on held-out contexts by detection and fuzzing
   (:mod:`uncover.autointerp.scoring`), and score the explanation of *another* feature on the same
   contexts: the random-explanation baseline (each feature's baseline is the next feature's
   explanation, cyclically, so at least two features are explained together).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.autointerp.examples import Context, FeatureContexts, feature_contexts
from uncover.autointerp.prompts import Messages, explainer_messages
from uncover.autointerp.scoring import Score, Scorer, detection, fuzzing
from uncover.autointerp.sources import FeatureSource, as_source, feature_activations
from uncover.core.errors import UncoverError
from uncover.core.html import Section
from uncover.core.progress import Progress
from uncover.core.results import Result
from uncover.hooks.contexts import contexts_html

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel

#: prompt -> explanation
Explainer = Callable[[Messages], str]
SCORES = ("detection", "fuzzing", "baseline_detection", "baseline_fuzzing")


@dataclass
class FeatureExplanation:
    """One feature's explanation, its scores and the contexts behind them.

    Attributes:
        feature: the feature's index. label: ``F12`` / ``N12``.
        explanation: the explainer's answer.
        baseline_of: the feature whose explanation is this one's random baseline.
        scores: ``detection``, ``fuzzing`` and their ``baseline_`` counterparts (:class:`Score` as dicts).
        shown: the contexts the explainer saw. active, inactive: the held-out contexts scored.
        threshold: the activation above which a token is marked. n_active: activating contexts in all.
    """

    feature: int
    label: str
    explanation: str
    baseline_of: int
    scores: dict[str, dict[str, float]]
    shown: list[Context]
    active: list[Context]
    inactive: list[Context]
    threshold: float
    n_active: int


@dataclass
class Explanations(Result):
    """Explanations of some features, scored by detection and fuzzing against a random-explanation baseline.

    Attributes:
        hook: where the features are read. kind: ``sae``, ``transcoder`` or ``neuron``.
        explainer: what explained (a model name, or a function's name). tokens: tokens streamed.
        features: one :class:`FeatureExplanation` per feature.
    """

    hook: str
    kind: str
    explainer: str
    tokens: int
    features: list[FeatureExplanation]

    @property
    def title(self) -> str:
        return f"Explanations of {self.kind} features at {self.hook}"

    def mean(self, score: str, metric: str = "balanced_accuracy") -> float:
        """The mean of one score over the features."""
        vals = [f.scores[score][metric] for f in self.features]
        return sum(vals) / len(vals) if vals else float("nan")

    def summary(self) -> str:
        lines = [f"{self.title} (explainer {self.explainer}, {self.tokens} tokens); balanced accuracy, "
                 f"explanation vs another feature's: detection {self.mean('detection'):.2f} vs "
                 f"{self.mean('baseline_detection'):.2f}, fuzzing {self.mean('fuzzing'):.2f} vs "
                 f"{self.mean('baseline_fuzzing'):.2f}"]
        for f in self.features:
            s = f.scores
            lines.append(f"  {f.label}: {f.explanation!r}  detection {s['detection']['balanced_accuracy']:.2f} "
                         f"(baseline {s['baseline_detection']['balanced_accuracy']:.2f}), fuzzing "
                         f"{s['fuzzing']['balanced_accuracy']:.2f} (baseline "
                         f"{s['baseline_fuzzing']['balanced_accuracy']:.2f})")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        """One row per feature: the explanation, then balanced accuracy, F1 and AUROC of each score."""
        import pandas as pd

        rows = []
        for f in self.features:
            row: dict[str, Any] = {"feature": f.feature, "label": f.label, "explanation": f.explanation,
                                   "baseline_of": f.baseline_of, "n_active": f.n_active}
            for s in SCORES:
                for m in ("balanced_accuracy", "f1", "auroc"):
                    row[f"{s}_{m}"] = f.scores[s][m]
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        x = [f.label for f in self.features]
        fig = go.Figure([go.Bar(name=s.replace("_", " "), x=x,
                                y=[f.scores[s]["balanced_accuracy"] for f in self.features]) for s in SCORES])
        fig.add_hline(y=0.5, line_dash="dot")
        fig.update_layout(barmode="group", title="Balanced accuracy of explanations (dotted: chance)",
                          yaxis_title="balanced accuracy", yaxis_range=[0, 1])
        return fig

    def html_sections(self) -> list[Any]:
        """The figure and table, then each feature's explanation and the contexts the explainer saw."""
        import html

        cards = []
        for f in self.features:
            scale = max([c.max_act for c in f.shown] or [1.0])
            rows = [(f"#{i}", c.tokens, c.acts, c.acts.index(c.max_act), c.max_act) for i, c in enumerate(f.shown)]
            cards.append(f"<h3>{html.escape(f.label)}: {html.escape(f.explanation)}</h3>"
                         + contexts_html(rows, scale))
        return [Section.from_result(self), Section("Contexts shown to the explainer", "\n".join(cards))]


def explain_features(model: HookedModel, source: Any, features: Sequence[int], tokens: torch.Tensor, *,
                     explainer: Explainer | None = None, scorer: Scorer | None = None,
                     scorer_model: HookedModel | None = None, ctx_len: int = 16, n_explain: int = 8,
                     n_holdout: int = 8, mark: float = 0.25, seed: int = 0, batch_size: int = 8,
                     progress: Progress | None = None) -> Explanations:
    """Explain ``features`` of ``source`` (an SAE, a transcoder or a :class:`FeatureSource`) and score them.

    ``tokens``: ``[n_blocks, pos]`` blocks streamed through ``model`` (use held-out text). ``explainer`` and
    ``scorer`` default to :class:`~uncover.autointerp.lm.LMExplainer` and
    :class:`~uncover.autointerp.lm.LMScorer` on ``scorer_model`` (default: ``model`` itself). Each feature's
    baseline is the next feature's explanation scored on this feature's contexts.

    >>> from uncover.autointerp import neuron_source
    >>> from uncover.data.corpus import token_blocks
    >>> r = explain_features(model, neuron_source(model, 3), [0, 1], token_blocks(model, block_len=33)[:16],
    ...                      explainer=lambda messages: "some words", scorer=lambda p: torch.ones(len(p)))
    >>> r.features[0].scores["detection"]["balanced_accuracy"]  # a scorer that always says Yes
    0.5
    """
    from uncover.autointerp.lm import LMExplainer, LMScorer

    src: FeatureSource = as_source(source)
    features = src.check(features)
    if len(features) < 2:
        raise UncoverError("explain at least two features: each one's random baseline is another's explanation")
    prog = progress or Progress(enabled=False)
    judge = scorer_model or model
    if explainer is None:
        explainer, name = LMExplainer(judge), judge.name or "model"
    else:
        name = getattr(explainer, "__name__", type(explainer).__name__)
    score_fn = scorer if scorer is not None else LMScorer(judge)
    acts = feature_activations(model, src, features, tokens, batch_size=batch_size)
    ids = sorted(set(tokens.unique().tolist()))
    strs = dict(zip(ids, model._strs(ids)))
    ctxs: list[FeatureContexts] = []
    for j, f in enumerate(features):
        try:
            ctxs.append(feature_contexts(acts[..., j], tokens, strs, ctx_len=ctx_len, n_explain=n_explain,
                                         n_holdout=n_holdout, mark=mark, seed=seed + f))
        except UncoverError as e:
            raise UncoverError(f"{src.label(f)}: {e}") from None
    texts = [explainer(explainer_messages(c.explain)) for c in prog.bar(ctxs, desc="explaining")]
    out = []
    for j, f in enumerate(features):
        b = (j + 1) % len(features)
        c = ctxs[j]
        scores: dict[str, Score] = {
            "detection": detection(texts[j], c, score_fn), "fuzzing": fuzzing(texts[j], c, score_fn, seed),
            "baseline_detection": detection(texts[b], c, score_fn),
            "baseline_fuzzing": fuzzing(texts[b], c, score_fn, seed)}
        out.append(FeatureExplanation(f, src.label(f), texts[j], features[b],
                                      {k: asdict(v) for k, v in scores.items()}, c.explain, c.active, c.inactive,
                                      c.threshold, c.n_active))
    return Explanations(src.hook, src.kind, name, int(tokens.numel()), out)
