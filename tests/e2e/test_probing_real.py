"""Probing on the embedded model: truth is linearly decodable above the control task in the
middle layers, and CCS beats chance on held-out statements without labels."""

from __future__ import annotations

import pytest
import torch

from uncover.data.activations import collect, resid_hooks
from uncover.data.labelled import truth_pairs, truth_statements
from uncover.probing import ccs_layers, probe_layers

pytestmark = pytest.mark.e2e

LAYERS = [0, 3, 12, 15, 18]


@pytest.fixture(scope="module")
def curve(real):
    s = truth_statements(real)
    assert len(s) >= 100  # the model knows most of the built-in facts
    with torch.no_grad():
        acts = collect(real, s, resid_hooks(real, LAYERS), progress=False)
    return probe_layers(acts, folds=5, dataset="truth")


def test_truth_is_decodable_above_control_in_middle_layers(curve):
    acc = dict(zip(curve.layers, curve.mean))
    sel = dict(zip(curve.layers, curve.selectivity))
    assert min(acc[12], acc[15], acc[18]) > 0.8
    assert min(sel[12], sel[15], sel[18]) > 0.05  # above the control task (Hewitt & Liang)
    assert acc[0] < 0.7 and acc[3] < acc[15]  # not yet at the start (the last token is ".")


def test_ccs_beats_chance_on_held_out_statements(real):
    p = truth_pairs(real)
    hooks = resid_hooks(real, [12, 15])
    with torch.no_grad():
        pos, neg = collect(real, p.positive, hooks, progress=False), collect(real, p.negative, hooks, progress=False)
    r = ccs_layers(pos, neg, p.labels, groups=p.groups, steps=300)
    assert r.n_test >= 20
    assert max(r.ccs) > 0.75  # chance is 0.5
    assert max(r.supervised) > 0.75
