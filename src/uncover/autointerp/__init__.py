"""Offline auto-interpretability: explain features with a local model, score explanations by detection and fuzzing.

See :mod:`uncover.autointerp.explain` for the pipeline and ``docs/autointerp.md`` for the prompts and
what a 135M-parameter explainer can and cannot do.
"""

from uncover.autointerp.examples import Context, FeatureContexts, feature_contexts, fuzzed
from uncover.autointerp.explain import Explanations, FeatureExplanation, explain_features
from uncover.autointerp.lm import LMExplainer, LMScorer
from uncover.autointerp.prompts import detection_messages, explainer_messages, fuzzing_messages, marked_text, render
from uncover.autointerp.scoring import Score, classify, detection, fuzzing
from uncover.autointerp.sources import FeatureSource, as_source, feature_activations, neuron_source, sae_source

__all__ = ["Context", "Explanations", "FeatureContexts", "FeatureExplanation", "FeatureSource", "LMExplainer",
           "LMScorer", "Score", "as_source", "classify", "detection", "detection_messages", "explain_features",
           "explainer_messages", "feature_activations", "feature_contexts", "fuzzed", "fuzzing",
           "fuzzing_messages", "marked_text", "neuron_source", "render", "sae_source"]
