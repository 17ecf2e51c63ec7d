"""Grokking end to end on a small config, within a minute of one CPU thread: the model memorizes the
training pairs at once, test accuracy stays low for a long stretch, then climbs to ≥ 0.95 while
train accuracy stays perfect (delayed generalisation, Power et al. 2022); across the climb the
weight norm falls and the embedding turns sparse in the Fourier basis (Nanda et al. 2023); without
weight decay the same run never generalises.

The config (a + b mod 31, half the pairs, lr 3e-3, weight decay 2, initial weights × 4) starts
above the generalising weight norm (Liu et al. 2023, "Omnigrok"): memorization at step 50, test
accuracy 0.18 at step 100, 0.52 at 300, 0.97 at 600, 0.99 at 700 (about 35 s of one thread on a
loaded 2-core machine; the run without weight decay stays at test accuracy 0.10 for the same 700
steps, about 30 s).
"""

from __future__ import annotations

import pytest
import torch

from uncover.dynamics.grokking import GrokConfig, progress_measures, train
from uncover.dynamics.grokking.compare import first_step
from uncover.dynamics.grokking.fourier import freq_norms, gini
from uncover.dynamics.grokking.groups import op_basis

pytestmark = pytest.mark.e2e

CFG = GrokConfig(p=31, train_frac=0.5, lr=3e-3, weight_decay=2.0, init_scale=4.0, steps=700, eval_every=25,
                 snapshot_every=100, checkpoint_every=0, seed=0)


def _train(cfg: GrokConfig):
    old = torch.get_num_threads()
    try:
        return train(cfg, progress=False, threads=1)
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def run():
    return _train(CFG)


@pytest.fixture(scope="module")
def steps(run):
    """Memorization step (train acc ≥ 0.99), half-way step (test acc ≥ 0.5), grokking step (≥ 0.95)."""
    m = run.metrics
    return first_step(m, "train_acc", 0.99), first_step(m, "test_acc", 0.5), first_step(m, "test_acc", 0.95)


def test_generalisation_is_delayed_after_memorization(run, steps):
    m = run.metrics
    mem, half, grok = steps
    assert mem is not None and mem <= 150, m.to_string()
    assert grok is not None, m.to_string()
    # train accuracy stays perfect from memorization on
    assert (m[m.step >= mem].train_acc >= 0.99).all(), m.to_string()
    # test accuracy stays low for a clear interval after memorization ...
    assert float(m[m.step == mem].test_acc.iloc[0]) < 0.2, m.to_string()
    assert half >= 2 * mem + 100, m.to_string()
    assert (m[m.step <= 2 * mem].test_acc < 0.3).all(), m.to_string()
    # ... and then the model generalises, long after it memorized
    assert grok >= 4 * mem and grok - mem >= 300, m.to_string()
    assert m.test_acc.iloc[-1] >= 0.95 and m.train_acc.iloc[-1] >= 0.99


def test_weight_norm_falls_and_fourier_sparsity_rises_across_grokking(run, steps):
    m = run.metrics.set_index("step")
    mem, _, grok = steps
    peak = float(m.weight_norm.loc[:mem + 50].max())
    assert m.weight_norm.loc[grok] < 0.9 * peak, m.weight_norm.to_string()
    assert m.embed_gini.loc[grok] > m.embed_gini.loc[mem] + 0.15, m.embed_gini.to_string()
    assert m.embed_gini.iloc[-1] > 0.3


def test_progress_measures_see_the_fourier_circuit_form(run, steps):
    mem, _, grok = steps
    r = progress_measures(run)
    s = r.measures.set_index("step")
    assert list(s.index) == list(range(0, 800, 100))
    assert 1 <= len(r.key_freqs) <= 6, r.key_freqs
    # the final embedding concentrates on the key frequencies
    norms = torch.tensor(r.embed_norms[1:])
    keys = torch.tensor(r.key_freqs) - 1
    assert float(norms[keys].pow(2).sum() / norms.pow(2).sum()) > 0.5
    # the key frequencies alone explain the answers better and better (restricted loss falls) and the
    # training pairs come to rely on them (removing them costs loss: excluded loss rises above full loss)
    assert s.restricted_loss.iloc[-1] < s.restricted_loss.loc[100] - 1.0, s.to_string()
    assert s.restricted_loss.iloc[-1] < 1.0, s.to_string()
    assert s.excluded_loss.iloc[-1] > s.full_loss.iloc[-1] + 1.0, s.to_string()
    assert s.logit_gini.iloc[-1] > s.logit_gini.loc[100], s.to_string()
    assert list(r.phases) == ["memorization", "circuit formation", "cleanup"], r.phases
    assert r.phases["memorization"] == (0, mem) and mem < r.phases["cleanup"][0] < grok
    assert "Grokking" in r.to_html()


def test_without_weight_decay_the_same_run_does_not_generalise():
    m = _train(CFG.replace(weight_decay=0.0, eval_every=100)).metrics
    assert first_step(m, "train_acc", 0.99) is not None and m.train_acc.iloc[-1] >= 0.99, m.to_string()
    assert m.test_acc.max() < 0.3, m.to_string()
    assert m.embed_gini.iloc[-1] < 0.15 and m.weight_norm.iloc[-1] > m.weight_norm.iloc[0]


def test_multiplication_embedding_is_sparse_in_the_discrete_log_basis():
    # a + b's test config with op "*" and a half-width model, 300 steps (about 10 s): the embedding
    # concentrates on a few frequencies of log_g a, not of the token index a
    cfg = CFG.replace(op="*", d_model=64, d_mlp=256, steps=300, eval_every=100, snapshot_every=0)
    run = _train(cfg)
    assert run.metrics.train_acc.iloc[-1] >= 0.99 and run.metrics.test_acc.iloc[-1] > 0.3, run.metrics.to_string()
    w_e = run.model.transformer.wte.weight.detach()[: cfg.p].double()
    stats = {}
    for op in ("*", "+"):
        b = op_basis(cfg.p, op)
        norms = freq_norms(b.matrix @ w_e, b.freqs)[1:]
        top3 = norms.pow(2).sort(descending=True).values[:3].sum() / norms.pow(2).sum()
        stats[op] = (gini(norms), float(top3))
    assert stats["*"][0] > 0.2 and stats["*"][0] > 3 * stats["+"][0], stats
    assert stats["*"][1] > 0.5 > stats["+"][1] + 0.15, stats
    # the training loop's embed_gini uses the basis of cfg.op
    assert run.metrics.embed_gini.iloc[-1] == pytest.approx(stats["*"][0])
