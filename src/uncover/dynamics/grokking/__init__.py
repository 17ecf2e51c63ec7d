"""Grokking on modular arithmetic (Power et al. 2022) and its progress measures (Nanda et al. 2023).

>>> from uncover.dynamics.grokking import GrokConfig, train, progress_measures
>>> run = train(GrokConfig(p=113, steps=25_000), "runs/grok")  # doctest: +SKIP
>>> progress_measures(run).to_html("grok.html")  # doctest: +SKIP
"""

from uncover.dynamics.grokking.compare import GrokSweepResult, fraction_sweep, weight_decay_comparison
from uncover.dynamics.grokking.config import OPS, GrokConfig, GrokConfigError
from uncover.dynamics.grokking.data import ModularData, apply_op, make_data
from uncover.dynamics.grokking.groups import OpBasis, discrete_log, op_basis, primitive_root
from uncover.dynamics.grokking.measures import phases, progress_measures
from uncover.dynamics.grokking.model import build_model, hooked
from uncover.dynamics.grokking.result import GrokkingResult
from uncover.dynamics.grokking.train import GrokRun, evaluate, latest_checkpoint, load_run, train

__all__ = [
    "OPS", "GrokConfig", "GrokConfigError", "ModularData", "apply_op", "make_data", "phases", "progress_measures",
    "build_model", "hooked", "GrokkingResult", "GrokRun", "evaluate", "latest_checkpoint", "load_run", "train",
    "GrokSweepResult", "fraction_sweep", "weight_decay_comparison", "OpBasis", "discrete_log", "op_basis",
    "primitive_root",
]
