"""Neurons: top-activating contexts, FFN key-value memories, knowledge neurons, ablation.

- :mod:`~uncover.neurons.top`: streamed top-k contexts and activation samples of MLP neurons
  or residual directions over a corpus, in bounded memory.
- :mod:`~uncover.neurons.kv`: FFN value vectors read through the unembedding
  (Geva et al. 2021, 2022).
- :mod:`~uncover.neurons.knowledge`: knowledge neurons by integrated gradients (Dai et al. 2022).
- :mod:`~uncover.neurons.ablation`: zero/mean/scale interventions on neurons and their effect.
- :mod:`~uncover.neurons.superposition`: toy models of superposition (Elhage et al. 2022).
"""

from uncover.neurons.ablation import NeuronAblation, ablate_neurons, neuron_interventions, set_neurons
from uncover.neurons.knowledge import KnowledgeEffect, KnowledgeNeurons, knowledge_effect, knowledge_neurons
from uncover.neurons.kv import NeuronLogits, neuron_logits
from uncover.neurons.top import top_activations

__all__ = [
    "KnowledgeEffect",
    "KnowledgeNeurons",
    "NeuronAblation",
    "NeuronLogits",
    "ablate_neurons",
    "knowledge_effect",
    "knowledge_neurons",
    "neuron_interventions",
    "neuron_logits",
    "set_neurons",
    "top_activations",
]
