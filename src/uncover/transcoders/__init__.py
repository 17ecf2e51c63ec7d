"""Transcoders: sparse stand-ins for MLPs, per layer or cross-layer, trained with the SAE trainer.

:class:`Transcoder` (SAELens's ``transcoder``/``skip_transcoder`` format), :class:`CrossLayerTranscoder`
(Ameisen et al. 2025), :class:`TranscoderSet` (either kind, the interface attribution graphs read),
:func:`train_transcoders`, :func:`evaluate_transcoders` and :func:`quick_transcoders`.
"""

from uncover.transcoders.base import Transcoder, TranscoderConfig, TranscoderError, mlp_in, mlp_out
from uncover.transcoders.clt import CLTConfig, CrossLayerTranscoder
from uncover.transcoders.evaluate import TranscoderEval, evaluate_transcoders, replaced_mlps
from uncover.transcoders.quick import QuickTranscoderSpec, quick_transcoders
from uncover.transcoders.sets import TranscoderSet
from uncover.transcoders.train import Trainable, TranscoderTraining, train_transcoders

__all__ = [
    "CLTConfig",
    "CrossLayerTranscoder",
    "QuickTranscoderSpec",
    "Trainable",
    "Transcoder",
    "TranscoderConfig",
    "TranscoderError",
    "TranscoderEval",
    "TranscoderSet",
    "TranscoderTraining",
    "evaluate_transcoders",
    "mlp_in",
    "mlp_out",
    "quick_transcoders",
    "replaced_mlps",
    "train_transcoders",
]
