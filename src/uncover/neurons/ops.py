"""Operations of the neurons package: ``neurons``, ``knowledge-neurons`` and ``superposition``.

- ``neurons``: top-activating corpus contexts of MLP neurons (:func:`~uncover.neurons.top.top_activations`)
  or, with ``logits``, the tokens their value vectors promote (Geva et al. 2022,
  :func:`~uncover.neurons.kv.neuron_logits`); both modes return one :class:`NeuronsResult`.
- ``knowledge-neurons``: knowledge neurons of a fact by integrated gradients (Dai et al. 2022) and
  the effect of suppressing / amplifying them.
- ``superposition``: toy models of superposition over a sparsity sweep (Elhage et al. 2022); no
  language model needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uncover.core.config import SEED_MAX, Config, param
from uncover.core.errors import UsageError
from uncover.core.modes import ModeResult
from uncover.hooks.contexts import TopActivations
from uncover.neurons.knowledge import KnowledgeNeurons
from uncover.neurons.kv import NeuronLogits
from uncover.neurons.superposition import ToyModels
from uncover.ops.registry import operation

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel


def check_corpus(path: Path | None, owner: str, label: str = "corpus (--corpus)") -> None:
    """Refuse a corpus file whose format :func:`~uncover.data.corpus.corpus_texts` cannot read.

    >>> check_corpus(Path("notes.pdf"), "Demo")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: Demo: corpus (--corpus) notes.pdf has an unknown format '.pdf'; valid: .txt, .jsonl
    """
    from uncover.data.corpus import FORMATS

    if path is not None and path.suffix.lower() not in FORMATS:
        raise UsageError(f"{owner}: {label} {path} has an unknown format {path.suffix!r}; valid: {', '.join(FORMATS)}")


@dataclass(frozen=True)
class NeuronsConfig(Config):
    """Top-activating contexts of MLP neurons, or (logits) the tokens their value vectors promote.

    >>> NeuronsConfig(layer=20, neuron=[5, 7]).neuron
    [5, 7]
    """

    layer: int = param(help="MLP layer", ge=0, unit="layer")
    neuron: list[int] = param([0], help="Neuron indices, comma-separated", ge=0, unit="neuron", min_items=1)
    k: int = param(10, help="Contexts (and tokens) per neuron", ge=1)
    blocks: int = param(256, help="Corpus blocks of 64 tokens to stream", ge=1)
    corpus: Path | None = param(None, help=".txt or .jsonl corpus (default: embedded)", path="in")
    logits: bool = param(False, help="Show promoted/suppressed tokens (Geva et al.) instead")

    def validate(self) -> None:
        check_corpus(self.corpus, "NeuronsConfig")
        if self.logits and self.corpus is not None:
            raise UsageError("NeuronsConfig: --corpus is for top contexts; --logits reads the weights only")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        if self.logits and self.k > model.cfg.d_vocab:
            raise UsageError(f"NeuronsConfig: k (--k) must be at most the vocabulary size {model.cfg.d_vocab}, "
                             f"got {self.k}")


@dataclass
class NeuronsResult(ModeResult):
    """What ``neurons`` found; ``result`` is the mode's own result.

    Attributes:
        mode: ``contexts`` (top-activating contexts) or ``logits`` (value-vector tokens).
        result: a :class:`TopActivations` or a :class:`NeuronLogits`.

    >>> import uncover as uc
    >>> r = uc.run("neurons", model, layer=3, neuron=[5], k=3, logits=True)
    >>> r.mode, len(r.result.promoted(0))
    ('logits', 3)
    """

    result: TopActivations | NeuronLogits


@operation("neurons", NeuronsConfig, NeuronsResult, example={"layer": 3, "neuron": [0, 1], "k": 3, "blocks": 4})
def neurons(model: HookedModel, cfg: NeuronsConfig, progress: Progress) -> NeuronsResult:
    """Top-activating corpus contexts of MLP neurons, or the tokens their value vectors promote."""
    from uncover.neurons.kv import neuron_logits
    from uncover.neurons.top import top_activations

    if cfg.logits:
        return NeuronsResult("logits", neuron_logits(model, cfg.layer, cfg.neuron, k=cfg.k))
    from uncover.data.corpus import corpus_texts

    progress.message(f"streaming {cfg.blocks} blocks ...")
    texts = corpus_texts(cfg.corpus) if cfg.corpus is not None else None
    return NeuronsResult("contexts", top_activations(model, cfg.layer, cfg.neuron, texts=texts, k=cfg.k,
                                                     max_blocks=cfg.blocks))


@dataclass(frozen=True)
class KnowledgeNeuronsConfig(Config):
    """Knowledge neurons of a fact: paraphrase prompts and their one-token answer.

    >>> KnowledgeNeuronsConfig(prompts=["The capital of France is"], target=" Paris", layers=[28, 29]).steps
    20
    """

    prompts: list[str] = param(help="A paraphrase prompt (repeat the option)", flag="--prompt", nonempty=True,
                               unit="tokens", min_items=1)
    target: str = param(help="The answer token, e.g. ' Paris'", nonempty=True, unit="token")
    layers: list[int] | None = param(None, help="Layers to attribute, comma-separated (default all)", ge=0,
                                     unit="layer", min_items=1)
    steps: int = param(20, help="Integrated-gradient steps", ge=1)
    threshold: float = param(0.2, help="Keep neurons above this x the prompt's max", gt=0, le=1)
    share: float = param(0.5, help="Keep neurons found in at least this fraction of prompts", gt=0, le=1)


@operation("knowledge-neurons", KnowledgeNeuronsConfig, KnowledgeNeurons,
           example={"prompts": ["The capital of France is"], "target": " Paris", "layers": [28, 29], "steps": 2})
def knowledge_neurons(model: HookedModel, cfg: KnowledgeNeuronsConfig, progress: Progress) -> KnowledgeNeurons:
    """Knowledge neurons of a fact (Dai et al. 2022) and the effect of suppressing / amplifying them."""
    from uncover.neurons.knowledge import knowledge_effect
    from uncover.neurons.knowledge import knowledge_neurons as find

    kn = find(model, cfg.prompts, cfg.target, layers=cfg.layers, steps=cfg.steps, threshold=cfg.threshold,
              share=cfg.share)
    if kn.neurons:
        kn.effect = knowledge_effect(model, kn)
        progress.message(kn.effect.summary())
    return kn


@dataclass(frozen=True)
class SuperpositionConfig(Config):
    """Toy models of superposition: n features in m hidden dimensions, one model per sparsity.

    >>> SuperpositionConfig(features=6, dims=2, sparsity=[0, 0.9]).sparsity
    [0.0, 0.9]
    """

    features: int = param(20, help="Number of features", ge=2)
    dims: int = param(5, help="Hidden dimensions", ge=1)
    sparsity: list[float] = param([0.0, 0.7, 0.9, 0.97, 0.99], help="Sparsity levels, comma-separated", ge=0, lt=1,
                                  min_items=1)
    decay: float = param(0.7, help="Importance of feature i is decay**i", gt=0, le=1)
    steps: int = param(3000, help="Adam steps", ge=1)
    seed: int = param(0, help="Seed of the initialisation and the data", ge=0, le=SEED_MAX)

    def validate(self) -> None:
        from uncover.core.memory import check_fits

        # the batched W [instance, m, n] with Adam, and batches of 1024 feature vectors per instance
        check_fits(4 * len(self.sparsity) * self.features * (4 * self.dims + 3 * 1024),
                   f"SuperpositionConfig: --features {self.features} x --dims {self.dims}",
                   "lower --features (a toy model has tens of features)")
        if self.dims >= self.features:
            raise UsageError(f"SuperpositionConfig: dims (--dims) must be fewer than features (--features) "
                             f"to need superposition, got {self.dims} >= {self.features}")


@operation("superposition", SuperpositionConfig, ToyModels, needs_model=False,
           example={"features": 6, "dims": 2, "sparsity": [0.0, 0.9], "steps": 20})
def superposition(model: None, cfg: SuperpositionConfig, progress: Progress) -> ToyModels:
    """Toy models of superposition: features represented, W^T W and feature dimensionality per sparsity."""
    from uncover.neurons.superposition import train_toy_models

    return train_toy_models(cfg.features, cfg.dims, cfg.sparsity, cfg.decay, steps=cfg.steps, seed=cfg.seed)
