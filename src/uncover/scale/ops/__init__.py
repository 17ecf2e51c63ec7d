"""Dataset-scale operations: ``harvest`` and the sweeps, each a map over shards plus a reduce that gives the
single-process result, on the local or the Ray engine (``--engine local|ray``).

- :mod:`~uncover.scale.ops.harvest`: ``harvest`` (activation shards with a manifest);
- :mod:`~uncover.scale.ops.corpus`: pruning's perplexity over token blocks (:func:`perplexity_sweep`) and
  top-activating contexts over a corpus (:func:`contexts_sweep`, ``contexts-sweep``);
- :mod:`~uncover.scale.ops.pairs` and :mod:`~uncover.scale.ops.pair_ops`: activation and attribution patching
  over many prompt pairs (:func:`patching_sweep`, ``patch-sweep``) and EAP/EAP-IG circuit discovery over many
  prompts (:func:`circuit_sweep`, ``circuit-sweep``);
- :mod:`~uncover.scale.ops.perplexity`: a model's perplexity over a corpus (``perplexity``; e.g. a pruned
  model saved by ``prune --out``);
- :mod:`~uncover.scale.ops.edits`: an edit evaluation over many facts (:func:`edit_sweep`, ``edit-sweep``).

Every part is a module-level callable, so Ray workers import it by name; the engine options are declared once
(:mod:`~uncover.scale.ops.engine`).
"""

from __future__ import annotations

from uncover.scale.ops.corpus import (
    ContextsPart,
    ContextsSweepConfig,
    contexts_sweep,
    merge_topk,
    perplexity_part,
    perplexity_reduce,
    perplexity_sweep,
)
from uncover.scale.ops.edits import (
    EditPart,
    EditSweepConfig,
    RomeEdit,
    concat_evals,
    edit_sweep,
    generated_counterfacts,
)
from uncover.scale.ops.engine import open_engine
from uncover.scale.ops.harvest import HarvestConfig, HarvestResult
from uncover.scale.ops.pair_ops import CircuitSweepConfig, PatchSweepConfig, sweep_pairs
from uncover.scale.ops.pairs import (
    EapPart,
    PatchSettings,
    PatchSweep,
    circuit_sweep,
    mean_scores,
    patching_sweep,
    stack_grids,
)
from uncover.scale.ops.perplexity import CorpusPerplexity, PerplexityConfig

__all__ = [
    "CircuitSweepConfig",
    "ContextsPart",
    "ContextsSweepConfig",
    "CorpusPerplexity",
    "EapPart",
    "EditPart",
    "EditSweepConfig",
    "HarvestConfig",
    "HarvestResult",
    "PatchSettings",
    "PatchSweep",
    "PatchSweepConfig",
    "PerplexityConfig",
    "RomeEdit",
    "circuit_sweep",
    "concat_evals",
    "contexts_sweep",
    "edit_sweep",
    "generated_counterfacts",
    "mean_scores",
    "merge_topk",
    "open_engine",
    "patching_sweep",
    "perplexity_part",
    "perplexity_reduce",
    "perplexity_sweep",
    "stack_grids",
    "sweep_pairs",
]
