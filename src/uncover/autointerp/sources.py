"""Feature sources: what auto-interpretability explains (SAE latents, transcoder features, MLP neurons).

A :class:`FeatureSource` is a hook and an encoder of its values into features, ``[batch, pos, d_in]
-> [batch, pos, n_features]``. An SAE is one (:func:`sae_source`: its ``encode`` at
``cfg.hook_name``); a transcoder is one by the same duck type (an ``encode`` and a ``cfg`` with
``hook_name`` and ``d_sae``); MLP neurons are the identity at ``blocks.{l}.mlp.hook_post``
(:func:`neuron_source`). :func:`feature_activations` streams token blocks through the model and
keeps the chosen features' activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name
from uncover.hooks.harvest import hook_values

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class FeatureSource:
    """Features read at one hook.

    Attributes:
        hook: the hook whose values are encoded.
        encode: ``[batch, pos, d_in] -> [batch, pos, n_features]`` feature activations.
        n_features: how many features there are (valid ids ``0 .. n_features - 1``).
        kind: what the features are (``"sae"``, ``"transcoder"``, ``"neuron"``), for labels.
    """

    hook: str
    encode: Callable[[torch.Tensor], torch.Tensor]
    n_features: int
    kind: str = "feature"

    def label(self, feature: int) -> str:
        """``F12`` for an SAE or transcoder latent, ``N12`` for a neuron."""
        return f"{'N' if self.kind == 'neuron' else 'F'}{feature}"

    def check(self, features: Sequence[int]) -> list[int]:
        """``features`` as a list, or ``UncoverError`` naming the valid range."""
        bad = [f for f in features if not 0 <= int(f) < self.n_features]
        if bad:
            raise UncoverError(f"{self.kind} feature(s) {bad} out of range; valid: 0..{self.n_features - 1}")
        return [int(f) for f in features]


def sae_source(sae: Any) -> FeatureSource:
    """The latents of an SAE (or of a transcoder: anything with ``encode`` and ``cfg.hook_name``, ``cfg.d_sae``).

    >>> from uncover.sae import SAEConfig, TopKSAE
    >>> src = sae_source(TopKSAE(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=2, hook_name="hook_embed")))
    >>> src.hook, src.n_features, src.kind
    ('hook_embed', 16, 'sae')
    """
    cfg = getattr(sae, "cfg", None)
    hook = getattr(cfg, "hook_name", "")
    if not hook or not callable(getattr(sae, "encode", None)):
        raise UncoverError(f"a {type(sae).__name__} is not a feature source: it needs encode() and cfg.hook_name")
    kind = "transcoder" if "transcoder" in type(sae).__name__.lower() else "sae"
    return FeatureSource(hook, sae.encode, int(cfg.d_sae), kind)


def neuron_source(model: HookedModel, layer: int) -> FeatureSource:
    """The MLP neurons of ``layer`` (``blocks.{layer}.mlp.hook_post``, the input to the down projection).

    >>> src = neuron_source(model, 3)
    >>> src.hook, src.n_features, src.label(7)
    ('blocks.3.mlp.hook_post', 1536, 'N7')
    """
    if not 0 <= layer < model.cfg.n_layers:
        raise UncoverError(f"layer {layer} out of range; valid: 0..{model.cfg.n_layers - 1}")
    hook = act_name("post", layer)
    model.site(hook)
    return FeatureSource(hook, lambda x: x, int(model.cfg.d_mlp), "neuron")


def as_source(obj: Any) -> FeatureSource:
    """A :class:`FeatureSource` as is, or an SAE-like object through :func:`sae_source`."""
    return obj if isinstance(obj, FeatureSource) else sae_source(obj)


@torch.no_grad()
def feature_activations(model: HookedModel, source: FeatureSource, features: Sequence[int], tokens: torch.Tensor,
                        batch_size: int = 8) -> torch.Tensor:
    """``[n_blocks, pos, len(features)]`` activations of ``features`` on token blocks ``[n_blocks, pos]``.

    >>> acts = feature_activations(model, neuron_source(model, 3), [0, 5], model.to_tokens(["a b c"]))
    >>> acts.shape
    torch.Size([1, 3, 2])
    """
    features = source.check(features)
    model.site(source.hook)
    out = [source.encode(v)[..., features].float() for v in hook_values(model, tokens, source.hook,
                                                                         batch_size=batch_size)]
    return torch.cat(out) if out else torch.zeros(0, tokens.shape[1], len(features))
