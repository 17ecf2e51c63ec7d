"""Auto-interpretability on tiny models with a stub explainer and scorer: prompts as documented, scoring right."""

from __future__ import annotations

import re

import pytest
import torch

from tests.conftest import V, tiny
from uncover.autointerp import (
    Context,
    FeatureSource,
    classify,
    detection_messages,
    explain_features,
    explainer_messages,
    feature_activations,
    feature_contexts,
    fuzzed,
    fuzzing_messages,
    neuron_source,
    render,
    sae_source,
)
from uncover.autointerp.lm import clean_explanation
from uncover.autointerp.prompts import DETECTION_SYSTEM, EXPLAIN_PREFIX, EXPLAIN_SYSTEM, FUZZING_SYSTEM
from uncover.core.errors import UncoverError
from uncover.sae import SAEConfig, TopKSAE

pytestmark = pytest.mark.usefixtures("one_thread_no_grad")


@pytest.fixture(scope="module")
def model():
    return tiny("llama")


def token_source(model, ids=(7, 9)) -> FeatureSource:
    """Features that fire (1.0) exactly on the tokens ``ids`` (read from the embeddings)."""
    W = model.W_E.detach()[list(ids)]

    def encode(x: torch.Tensor) -> torch.Tensor:
        return ((x[..., None, :] - W).abs().amax(-1) < 1e-6).float()

    return FeatureSource("hook_embed", encode, len(ids), "sae")


def blocks(n=64, pos=33, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (n, pos), generator=g)


def stub_explainer(messages):
    """Names the token marked most often: a perfect explanation of a single-token feature."""
    found = re.findall(r"<<(<\d+>)>>", messages[-1]["content"])
    return "token " + max(set(found), key=found.count)


def stub_scorer(prompts):
    """Applies the explanation as a rule: the token is in the text (detection) or is what is marked (fuzzing)."""
    out = []
    for system, user in ((m[0]["content"], m[1]["content"]) for m in prompts):
        tok = re.search(r"Description: token (<\d+>)", user).group(1)
        text = user.split("\nText: ")[1].split("\n")[0]
        if system == DETECTION_SYSTEM:
            yes = tok in text
        else:
            assert system == FUZZING_SYSTEM
            marks = re.findall(r"<<((?:<\d+>)+)>>", text)
            yes = bool(marks) and all(m == tok * (len(m) // len(tok)) for m in marks)
        out.append(1.0 if yes else -1.0)
    return torch.tensor(out)


def test_perfect_explanation_scores_one_and_another_features_about_half(model):
    r = explain_features(model, token_source(model), [0, 1], blocks(), explainer=stub_explainer,
                         scorer=stub_scorer, ctx_len=4, n_explain=5, n_holdout=20)
    assert [f.explanation for f in r.features] == ["token <7>", "token <9>"]
    for f in r.features:
        s = f.scores
        assert s["detection"]["balanced_accuracy"] == 1.0 and s["fuzzing"]["balanced_accuracy"] == 1.0
        assert s["detection"]["auroc"] == 1.0 and s["detection"]["f1"] == 1.0
        assert abs(s["baseline_detection"]["balanced_accuracy"] - 0.5) <= 0.15, s
        assert s["baseline_fuzzing"]["balanced_accuracy"] == 0.5, s  # never says yes
        assert f.baseline_of != f.feature
    frame = r.to_frame()
    assert list(frame["detection_balanced_accuracy"]) == [1.0, 1.0]
    assert "token <7>" in r.summary() and "<h3>" in r.to_html()


def test_the_pipeline_sends_the_documented_prompts(model):
    seen: dict[str, list] = {"explain": [], "score": []}

    def explainer(messages):
        seen["explain"].append(messages)
        return "anything"

    def scorer(prompts):
        seen["score"] += prompts
        return torch.zeros(len(prompts))

    r = explain_features(model, token_source(model), [0, 1], blocks(), explainer=explainer, scorer=scorer,
                         ctx_len=4, n_explain=3, n_holdout=4)
    f = r.features[0]
    assert seen["explain"][0] == explainer_messages(f.shown)
    det = [detection_messages("anything", c) for c in [*f.active, *f.inactive]]
    fuz = [fuzzing_messages("anything", c) for c in f.active]
    assert seen["score"][: len(det)] == det and seen["score"][len(det) : len(det) + len(fuz)] == fuz
    assert f.scores["detection"]["balanced_accuracy"] == 0.5  # always "No"


def test_prompt_texts():
    ctx = Context(["The", " cat", " sat", "\n", "."], [0.0, 2.0, 1.0, 0.0, 0.0], [False, True, True, False, False])
    m = explainer_messages([ctx, ctx])
    assert m == [{"role": "system", "content": EXPLAIN_SYSTEM},
                 {"role": "user", "content": "Examples:\n1. The<< cat sat>> .\n2. The<< cat sat>> .\n\n"
                                             "What do the marked tokens have in common?"}]
    assert detection_messages("cats", ctx)[1]["content"] == ("Description: cats\nText: The cat sat .\n"
                                                             "Does the feature fire on this text?")
    assert fuzzing_messages("cats", ctx)[1]["content"] == (
        "Description: cats\nText: The<< cat sat>> .\nAre the marked tokens the ones the description is about?")
    assert render(None, m, EXPLAIN_PREFIX).endswith('in common?\n\nAnswer: The marked tokens are words like "')
    assert clean_explanation('defined", "occurs", "defined" and') == 'words like "defined", "occurs"'
    assert clean_explanation("1. a<< b>> c\n2.<< d>>") == 'words like "b", "d"'
    assert clean_explanation("\n") == clean_explanation("<<<<<<<<") == "(empty)"


def test_classify_agrees_with_rank_statistics():
    g = torch.Generator().manual_seed(0)
    m = torch.randint(-3, 4, (50,), generator=g).float()  # many ties
    y = torch.randint(0, 2, (50,), generator=g)
    s = classify(m, y)
    # AUROC = Mann-Whitney U / (n1 n0), with average ranks for ties
    order = m.argsort()
    ranks = torch.empty(50)
    ranks[order] = torch.arange(1, 51).float()
    for v in m.unique():
        ranks[m == v] = ranks[m == v].mean()
    n1, n0 = int(y.sum()), int((1 - y).sum())
    u = ranks[y == 1].sum() - n1 * (n1 + 1) / 2
    assert s.auroc == pytest.approx(float(u) / (n1 * n0), abs=1e-6)
    pred = m > 0
    tpr = float((pred & (y == 1)).sum()) / n1
    tnr = float((~pred & (y == 0)).sum()) / n0
    assert s.balanced_accuracy == pytest.approx((tpr + tnr) / 2, abs=1e-6)


def test_contexts_split_and_fuzzing():
    toks = blocks(8, 33)
    acts = torch.rand(8, 33, generator=torch.Generator().manual_seed(1)) ** 8
    fc = feature_contexts(acts, toks, {}, ctx_len=8, n_explain=3, n_holdout=4, mark=0.3)
    peaks = [c.max_act for c in fc.explain]
    assert peaks == sorted(peaks, reverse=True) and fc.threshold == pytest.approx(0.3 * float(acts.max()))
    assert min(peaks) >= max(c.max_act for c in fc.active) > fc.threshold
    assert all(c.max_act <= fc.threshold for c in fc.inactive)
    assert all(m == (a > fc.threshold) for c in fc.active for a, m in zip(c.acts, c.marked))
    for i, c in enumerate(fc.active):
        f = fuzzed(c, i)
        assert sum(f.marked) == min(sum(c.marked), len(c.marked) - sum(c.marked))
        assert not any(a and b for a, b in zip(f.marked, c.marked))
    with pytest.raises(UncoverError, match="never fires"):
        feature_contexts(torch.zeros(2, 9), toks[:2, :9], {})


def test_sources_read_the_right_values(model):
    toks = blocks(3, 10)
    _, cache = model.run_with_cache(toks)
    n = neuron_source(model, 1)
    assert torch.allclose(feature_activations(model, n, [0, 5], toks), cache["blocks.1.mlp.hook_post"][..., [0, 5]])
    sae = TopKSAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4, hook_name="blocks.2.hook_resid_post"))
    ref = sae.encode(cache["blocks.2.hook_resid_post"])[..., [3, 60]]
    assert torch.allclose(feature_activations(model, sae_source(sae), [3, 60], toks), ref, atol=1e-6)
    with pytest.raises(UncoverError, match="valid: 0..63"):
        sae_source(sae).check([64])
    with pytest.raises(UncoverError, match="at least two"):
        explain_features(model, sae, [3], toks, explainer=stub_explainer, scorer=stub_scorer)
