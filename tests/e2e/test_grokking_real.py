"""Grokking end to end on a small config: the model memorizes the training pairs first and keeps
generalising afterwards, while train accuracy is already perfect (delayed generalisation); the
progress measures of Nanda et al. (2023) see the Fourier circuit form.

Budget note: this config (p = 53, 30 % of pairs, lr 3e-3, weight decay 1) memorizes by step ~600 with
test accuracy ~0.4, then test accuracy climbs while train accuracy stays at 1 (0.53 at step 2000,
test loss 7.5 → 3.5). Reaching high test accuracy needs several thousand more steps, more than a test
may spend on a shared CPU (about 70 s of one core here); docs/grokking.md records longer runs.
"""

from __future__ import annotations

import pytest
import torch

from uncover.dynamics.grokking import GrokConfig, progress_measures, train
from uncover.dynamics.grokking.compare import first_step

pytestmark = pytest.mark.e2e

CFG = GrokConfig(p=53, train_frac=0.3, lr=3e-3, steps=2000, eval_every=50, snapshot_every=500, seed=0)


@pytest.fixture(scope="module")
def run():
    old = torch.get_num_threads()
    try:
        return train(CFG, progress=False, threads=1)
    finally:
        torch.set_num_threads(old)


def test_generalisation_continues_after_memorization(run):
    m = run.metrics
    memorized = first_step(m, "train_acc", 0.99)
    assert memorized is not None and memorized <= 1000, m.to_string()
    at_mem = m[m.step == memorized].iloc[0]
    last = m.iloc[-1]
    # when the training set is memorized, most test pairs are still wrong ...
    assert at_mem.test_acc < 0.5, m.to_string()
    # ... and test accuracy keeps rising afterwards while train accuracy stays perfect
    assert last.train_acc >= 0.99
    assert last.test_acc >= at_mem.test_acc + 0.08, m.to_string()
    assert last.test_loss < at_mem.test_loss - 1.0, m.to_string()


def test_progress_measures_see_the_fourier_circuit_form(run):
    r = progress_measures(run)
    s = r.measures
    assert s.step.tolist() == [0, 500, 1000, 1500, 2000]
    assert len(r.key_freqs) >= 1
    # weight decay makes the embedding sparse in the Fourier basis
    assert s.embed_gini.iloc[-1] > s.embed_gini.iloc[0] + 0.05
    # the training pairs rely on the key frequencies: removing them costs loss
    assert s.excluded_loss.iloc[-1] > s.full_loss.iloc[-1]
    assert list(r.phases)[:2] == ["memorization", "circuit formation"]
    assert "Grokking" in r.to_html()
