"""SAE evaluation metrics in the spirit of SAEBench (Karvonen et al. 2025), sized for a CPU.

See :mod:`uncover.saebench.bench` for the table and ``docs/saebench.md`` for what each metric means
and how it is simplified.
"""

from uncover.saebench.absorption import Absorption, LetterAbsorption, absorption, first_letter_words, word_inputs
from uncover.saebench.bench import SAEBenchResult, letter_absorption, probe_dataset, sae_bench
from uncover.saebench.probing import SparseProbe, pooled_latents, sparse_probe, stratified_split, top_latents

__all__ = ["Absorption", "LetterAbsorption", "SAEBenchResult", "SparseProbe", "absorption", "first_letter_words",
           "letter_absorption", "pooled_latents", "probe_dataset", "sae_bench", "sparse_probe", "stratified_split",
           "top_latents", "word_inputs"]
