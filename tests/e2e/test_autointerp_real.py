"""Auto-interpretability and SAE bench on the embedded SmolLM2 with its quick SAE, end to end."""

from __future__ import annotations

import pytest
import torch

import uncover as uc
from uncover.autointerp import LMExplainer, LMScorer, detection_messages, explain_features, explainer_messages
from uncover.autointerp.examples import Context
from uncover.data.corpus import token_blocks
from uncover.sae.quick import quick_sae
from uncover.saebench import sae_bench

pytestmark = pytest.mark.e2e

#: two latents of the quick SAE that fire in enough held-out contexts (see docs/autointerp.md)
LATENTS = [2, 3]


@pytest.fixture(scope="module")
def sae(real):
    return quick_sae(real, progress=False)


def test_explain_two_quick_sae_latents(real, sae, tmp_path):
    tokens = token_blocks(real, block_len=65, split="heldout")[:24]
    r = explain_features(real, sae, LATENTS, tokens, ctx_len=12, n_explain=5, n_holdout=2)
    assert [f.feature for f in r.features] == LATENTS and r.explainer == real.name
    for f in r.features:
        assert isinstance(f.explanation, str) and f.explanation
        assert f.scores["detection"]["n"] == 4 and f.scores["fuzzing"]["n"] == 4
        for s in f.scores.values():
            assert 0.0 <= s["balanced_accuracy"] <= 1.0 and 0.0 <= s["auroc"] <= 1.0
        assert all(c.max_act > f.threshold for c in f.shown + f.active)
        assert all(c.max_act <= f.threshold for c in f.inactive)
    again = LMExplainer(real)(explainer_messages(r.features[0].shown))
    assert again == r.features[0].explanation  # greedy: deterministic
    back = uc.load_result(r.save(tmp_path / "r.safetensors"))
    assert back.to_frame().equals(r.to_frame())


def test_lm_scorer_batches_like_single_prompts(real):
    scorer = LMScorer(real, batch_size=4)
    prompts = [detection_messages("the word cat", Context(list(t), [0.0] * len(t), [False] * len(t)))
               for t in (["The", " cat", " sat"], ["Stock", " prices", " fell", " sharply", " today"], ["A", " cat"])]
    batched = scorer(prompts)
    single = torch.cat([scorer([p]) for p in prompts])
    assert torch.allclose(batched, single, atol=1e-3)


def test_sae_bench_on_the_quick_sae(real, sae):
    tokens = token_blocks(real, block_len=128, split="heldout")[:2]
    r = sae_bench(real, sae, tokens, [uc.data.labelled.load_labelled("sentiment")], ks=[1, 5], per_letter=12)
    m = r.metrics
    assert m["l0"] == pytest.approx(sae.cfg.k, abs=0.5)  # a TopK SAE: k active latents per token
    assert 0.5 < m["loss_recovered"] <= 1.05 and m["ce_clean"] < m["ce_sae"] < m["ce_zero"]
    full = next(p["accuracy"] for p in r.probing if p["k"] == 0)
    assert full >= 0.9  # sentiment is linearly readable from a middle layer
    assert m["first_letter_probe"] > 0.8 and 0.0 <= m["absorption"] <= 1.0
