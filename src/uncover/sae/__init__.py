"""Sparse autoencoders: architectures, activation stores, training, evaluation, dashboards.

One file per architecture over :mod:`~uncover.sae.base` (SAELens on-disk format):
:class:`ReLUSAE` (Bricken et al. 2023), :class:`TopKSAE` (Gao et al. 2024),
:class:`JumpReLUSAE` (Rajamanoharan et al. 2024).
"""

from uncover.sae.attach import SAEAttachment, attach_sae
from uncover.sae.base import ARCHITECTURES, SAE, SAEConfig, SAEError
from uncover.sae.dashboard import FeatureDashboard, feature_dashboard
from uncover.sae.evaluate import SAEEval, evaluate_sae
from uncover.sae.jumprelu import JumpReLUSAE
from uncover.sae.relu import ReLUSAE
from uncover.sae.store import ActivationStore, ShardSource, TensorSource, harvest
from uncover.sae.topk import TopKSAE
from uncover.sae.train import TrainConfig, TrainResult, train_sae

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "ActivationStore",
    "FeatureDashboard",
    "SAEAttachment",
    "SAEEval",
    "attach_sae",
    "evaluate_sae",
    "feature_dashboard",
    "JumpReLUSAE",
    "ReLUSAE",
    "SAEConfig",
    "SAEError",
    "ShardSource",
    "TensorSource",
    "TopKSAE",
    "TrainConfig",
    "TrainResult",
    "harvest",
    "train_sae",
]
