"""Activation patching on the embedded model: the IOI information moves from the S2 token to the end."""

from __future__ import annotations

import pytest
import torch

from uncover import Replace
from uncover.data.tasks import ioi
from uncover.patching.activation import activation_patching

pytestmark = pytest.mark.e2e

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def resid(real):
    return activation_patching(real, CLEAN, CORRUPT, " Mary", " John")


def test_information_moves_from_s2_to_the_end(resid):
    s2 = resid.first_diff  # the only differing token: ' John' vs ' Mary'
    last = resid.grid.shape[1] - 1
    assert resid.str_tokens[s2] == " Mary"
    assert resid.grid[:10, s2].min() > 0.9  # early: all of it sits at S2
    assert resid.grid[-3:, last].min() > 0.9  # late: all of it sits at the final position
    assert resid.grid[-3:, s2].max() < 0.1
    crossing = [layer for layer in range(resid.grid.shape[0]) if resid.grid[layer, last] > resid.grid[layer, s2]]
    assert 10 < crossing[0] < 28  # the move happens in the middle-to-late layers
    assert torch.all(resid.grid[:, :s2] == 0)


def test_cells_equal_full_forward(real, resid):
    _, cache = real.run_with_cache(CLEAN)
    mary, john = real.to_single_token(" Mary"), real.to_single_token(" John")
    for layer, p in [(5, 9), (20, 9), (24, 13), (29, 13)]:
        name = f"blocks.{layer}.hook_resid_pre"
        with real.intervene([Replace(name, source=cache[name], positions=[p])]):
            out = real(CORRUPT)[0, -1]
        v = (float(out[mary] - out[john]) - resid.corrupt_value) / (resid.clean_value - resid.corrupt_value)
        assert abs(v - float(resid.grid[layer, p])) < 1e-4


def test_ioi_mean_logit_difference_is_positive(real):
    t = ioi(16).check(real)
    logits = real(t.clean)
    last = real.tokenize(t.clean).columns(-1)[:, 0]
    diffs = torch.tensor([float(logits[i, last[i], real.to_single_token(p.answer)]
                                - logits[i, last[i], real.to_single_token(p.wrong)]) for i, p in enumerate(t.pairs)])
    assert diffs.mean() > 1.0 and (diffs > 0).float().mean() >= 0.75
    abba = [d for d, p in zip(diffs, t.pairs) if p.meta["order"] == "ABBA"]
    baba = [d for d, p in zip(diffs, t.pairs) if p.meta["order"] == "BABA"]
    assert sum(abba) / len(abba) > 0 and sum(baba) / len(baba) > 0
