"""Probes, control tasks and CCS on synthetic data with planted structure."""

from __future__ import annotations

import pytest
import torch

from uncover.core.errors import UncoverError
from uncover.data.activations import ActivationSet
from uncover.probing import ccs_layers, control_labels, cross_validate, fit_ccs, fit_probe, folds_of, probe_layers


def planted(n: int = 240, d: int = 16, seed: int = 0):
    """Gaussian data whose label is the sign of the projection on a random unit direction."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    X = torch.randn(n, d, generator=g) * torch.linspace(0.5, 2.0, d)  # anisotropic: std matters
    y = (X @ u > 0).long()
    X = X + 1.5 * torch.outer(2.0 * y - 1, u)  # a margin along u
    return X, y, u


@pytest.fixture(autouse=True)
def _fast(one_thread_no_grad):
    yield


def test_probe_recovers_planted_direction():
    X, y, u = planted()
    p = fit_probe(X[:160], y[:160])
    assert p.score(X[160:], y[160:]) > 0.95
    assert float(p.direction @ u) > 0.85  # the raw-space direction (a random one: ~0.25)
    mlp = fit_probe(X[:160], y[:160], kind="mlp")
    assert mlp.score(X[160:], y[160:]) > 0.9
    with pytest.raises(UncoverError, match="binary logistic"):
        _ = mlp.direction


def test_mlp_probe_learns_what_a_linear_probe_cannot():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(400, 2, generator=g)
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).long()  # XOR
    assert fit_probe(X[:300], y[:300]).score(X[300:], y[300:]) < 0.7
    assert fit_probe(X[:300], y[:300], kind="mlp", steps=400).score(X[300:], y[300:]) > 0.85


def test_control_task_is_near_chance_and_selectivity_positive():
    X, y, _ = planted()
    acts = ActivationSet({"blocks.3.hook_resid_post": X}, [f"t{i}" for i in range(len(y))], y, None)
    curve = probe_layers(acts, folds=4, control_types=[str(i) for i in range(len(y))], dataset="planted")
    assert curve.mean[0] > 0.9
    assert abs(curve.control_mean[0] - 0.5) < 0.12  # random labels per unseen type: nothing to learn
    assert curve.selectivity[0] > 0.3
    assert curve.layers == [3] and "selectivity" in curve.summary()
    frame = curve.to_frame()
    assert list(frame["layer"]) == [3] and curve.plot().data


def test_control_labels_follow_types_and_label_distribution():
    y = torch.tensor([0] * 90 + [1] * 10)
    c = control_labels([str(i % 50) for i in range(100)], y, seed=3)
    assert all(c[i] == c[i + 50] for i in range(50))
    assert c.float().mean() < 0.4  # drawn from the (skewed) empirical distribution


def test_folds_keep_groups_and_cover_everything():
    groups = [str(i // 3) for i in range(30)]
    folds = folds_of(30, 5, groups=groups, seed=2)
    assert sorted(torch.cat(folds).tolist()) == list(range(30))
    for f in folds:
        assert {groups[i] for i in f.tolist()}.isdisjoint({groups[i] for i in range(30) if i not in f.tolist()})
    with pytest.raises(UncoverError, match="cannot fill"):
        folds_of(3, 5)


def test_cross_validate_equals_manual_folds():
    X, y, _ = planted(n=60)
    accs = cross_validate(X, y, folds=3, seed=4)
    for acc, test in zip(accs, folds_of(60, 3, seed=4)):
        train = torch.ones(60, dtype=torch.bool)
        train[test] = False
        assert acc == fit_probe(X[train], y[train], seed=4).score(X[test], y[test])


def contrast(n: int = 120, d: int = 12, seed: int = 0):
    """Pairs whose truth flips the sign of a planted direction between the two sides."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    truth = torch.randint(0, 2, (n,), generator=g)
    base = torch.randn(n, d, generator=g) * 2
    s = (2.0 * truth - 1)[:, None] * u
    answer = torch.randn(d, generator=g)  # the "Yes"/"No" token's own direction, removed by normalisation
    return base + 2 * s + answer, base - 2 * s - answer, truth, u


def test_ccs_finds_planted_contrast_direction():
    xp, xn, truth, u = contrast()
    probe = fit_ccs(xp[:80], xn[:80], labels=truth[:80], pca=None)
    assert probe.score(xp[80:], xn[80:], truth[80:]) > 0.95
    w_raw = probe.w / probe.std_pos  # the direction in activation space
    assert abs(float(w_raw @ u / w_raw.norm())) > 0.8
    # unsupervised: without labels the sign is arbitrary but the split is right
    free = fit_ccs(xp[:80], xn[:80], pca=None)
    acc = free.score(xp[80:], xn[80:], truth[80:])
    assert max(acc, 1 - acc) > 0.95


def test_ccs_layers_reports_both_probes():
    xp, xn, truth, _ = contrast()
    h = "blocks.1.hook_resid_post"
    pos = ActivationSet({h: xp}, [""] * len(truth))
    neg = ActivationSet({h: xn}, [""] * len(truth))
    r = ccs_layers(pos, neg, truth, steps=300, pca=4)
    assert r.n_train + r.n_test == len(truth)
    assert r.ccs[0] > 0.9 and r.supervised[0] > 0.9
    assert "CCS" in r.summary() and list(r.to_frame()["layer"]) == [1]
    with pytest.raises(UncoverError, match="empty dataset"):
        ccs_layers(ActivationSet({h: xp[:0]}, []), ActivationSet({h: xn[:0]}, []), [])


def test_probe_errors():
    with pytest.raises(UncoverError, match="two classes"):
        fit_probe(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(UncoverError, match="NaN"):
        fit_probe(torch.full((4, 3), float("nan")), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(UncoverError, match="valid: logistic, mlp"):
        fit_probe(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), kind="svm")


def test_causal_check_moves_the_score_along_an_unembedding_direction():
    from tests.unit.test_activations import word_model
    from uncover.probing import causal_check

    m = word_model("llama")
    prompts = ["the movie was", "my day was very"]
    good, bad = m.to_single_token("good"), m.to_single_token("bad")
    u = m.W_U[:, good] - m.W_U[:, bad]  # read off by the final norm and unembedding
    r = causal_check(m, u.detach(), "blocks.2.hook_resid_post", prompts, ["good"], ["bad"], scales=(-2, 0, 2))
    lp = m(prompts).log_softmax(-1)
    last = m.tokenize(prompts).columns(-1)[:, 0]
    ref = float((lp[[0, 1], last][:, good] - lp[[0, 1], last][:, bad]).mean())
    assert r.score[1] == pytest.approx(ref, abs=1e-5)  # scale 0 is the unsteered model
    assert r.monotonic and r.score[2] - r.score[0] > 0.5
