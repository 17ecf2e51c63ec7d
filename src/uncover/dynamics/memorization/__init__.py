"""Memorization in a small language model trained with canaries and duplicates (Tirumala et al.
2022; Carlini et al. 2021, 2023; Stoehr et al. 2024) and extraction scans of pretrained models.

>>> from uncover.dynamics.memorization import MemConfig, train_memorization, memorization_report
>>> run = train_memorization(MemConfig(steps=800))  # doctest: +SKIP
>>> print(memorization_report(run).summary())  # doctest: +SKIP
"""

from uncover.dynamics.memorization.config import MemConfig, MemConfigError
from uncover.dynamics.memorization.data import MemData, decode, encode, make_data
from uncover.dynamics.memorization.localize import LocalizationResult, attribution, localize, localize_run
from uncover.dynamics.memorization.metrics import (
    auroc,
    extractable,
    greedy_continuation,
    membership_scores,
    token_losses,
    token_memorization,
    zlib_bits,
)
from uncover.dynamics.memorization.report import MemorizationResult, membership_table, memorization_report
from uncover.dynamics.memorization.scan import ExtractionScanResult, builtin_text, extraction_scan
from uncover.dynamics.memorization.train import MemRun, build_model, train_memorization

__all__ = [
    "MemConfig", "MemConfigError", "MemData", "decode", "encode", "make_data", "LocalizationResult", "attribution",
    "localize", "localize_run", "auroc", "extractable", "greedy_continuation", "membership_scores", "token_losses",
    "token_memorization", "zlib_bits", "MemorizationResult", "membership_table", "memorization_report",
    "ExtractionScanResult", "builtin_text", "extraction_scan", "MemRun", "build_model", "train_memorization",
]
