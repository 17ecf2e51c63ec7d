"""Decoding strategies that use the model's insides: DoLa (Chuang et al. 2024)."""

from uncover.decoding.compare import DecodingComparison, DolaFacts, compare_decoding, dola_fact_accuracy
from uncover.decoding.dola import DolaGeneration, candidate_layers, contrast, dola_generate, dola_scores

__all__ = ["DolaGeneration", "DecodingComparison", "DolaFacts", "candidate_layers", "contrast", "dola_generate",
           "dola_scores", "compare_decoding", "dola_fact_accuracy"]
