"""Model diffing: crosscoders (Lindsey et al. 2024) and ``uncover diff`` (what an edit, a pruning, a steering or a
fine-tune changed in a model's mechanisms).

:mod:`~uncover.diffing.crosscoder` (the model), :mod:`~uncover.diffing.analysis` (paired activations,
training, latent classes), :mod:`~uncover.diffing.changed` (what CHANGED is), :mod:`~uncover.diffing.diff`
(the side-by-side diff) and :mod:`~uncover.diffing.ops` (the ``diff`` operation).
"""

from uncover.diffing.analysis import (
    CrosscoderAnalysis,
    analyse_crosscoder,
    block_context,
    paired_activations,
    train_crosscoder,
)
from uncover.diffing.changed import Change, resolve_change
from uncover.diffing.crosscoder import Crosscoder, latent_classes
from uncover.diffing.diff import ModelDiff, model_diff

__all__ = ["Change", "Crosscoder", "CrosscoderAnalysis", "ModelDiff", "analyse_crosscoder", "block_context",
           "latent_classes", "model_diff", "paired_activations", "resolve_change", "train_crosscoder"]
