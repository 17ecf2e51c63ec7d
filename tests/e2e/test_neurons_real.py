"""Neurons on the embedded SmolLM2: knowledge neurons of a fact matter far more than random neurons."""

from __future__ import annotations

import pytest
import torch

from uncover.neurons import knowledge_effect, knowledge_neurons, neuron_logits, top_activations

pytestmark = pytest.mark.e2e

PROMPTS = ["The capital of France is", "The French capital is", "The capital city of France is"]


@pytest.fixture(scope="module")
def kn(real):
    return knowledge_neurons(real, PROMPTS, " Paris", layers=range(18, 30), steps=6, layers_per_pass=12)


def test_knowledge_neurons_suppress_and_amplify(real, kn):
    assert 1 <= len(kn.neurons) <= 200
    eff = knowledge_effect(real, kn, n_random=3)
    # suppressing the knowledge neurons lowers P(Paris) far more than as many random neurons
    assert eff.change("suppressed") < -0.2
    assert eff.change("suppressed") < 3 * eff.change("random") - 0.1
    assert abs(eff.change("random")) < 0.1
    # amplifying them raises it
    assert eff.change("amplified") > 0.05


def test_top_activations_and_value_tokens(real, kn):
    layer, n = kn.neurons[0]
    r = top_activations(real, layer, [n], k=5, max_blocks=24, batch_size=8)
    assert r.values.shape == (1, 5) and bool((r.values[0, :-1] >= r.values[0, 1:]).all())
    toks, acts, mark = r.context(0, 0)
    assert acts[mark] == pytest.approx(float(r.values[0, 0]), abs=1e-4)
    logits = neuron_logits(real, layer, [n], k=20)
    assert len(logits.promoted(0)) == 20
    assert torch.isfinite(logits.top_values).all()
