"""The probing and steering operations on the embedded model: ``read --data honesty`` works with its default layers
(issue 14: layer 0's resid_pre cannot tell a pair apart, so it is skipped; asking for it explicitly fails with a
message naming the hook, see tests/unit/test_ops_probing_steering.py), and CCS reads a pairs file with word labels."""

from __future__ import annotations

import pytest

import uncover as uc

pytestmark = pytest.mark.e2e


def test_read_honesty_with_default_layers(real):
    r = uc.run("read", real, data="honesty")
    assert r.layers == list(range(1, real.cfg.n_layers))
    assert max(r.accuracy["mean"]) > 0.9  # honest vs dishonest instructions are easy to read in the middle layers


def test_ccs_on_a_pairs_file_with_word_labels(real, tmp_path):
    path = tmp_path / "pairs.csv"
    rows = ["positive,negative,label"] + [f"The capital of {c} is {a}.,The capital of {c} is {b}.,{lab}"
                                          for c, a, b, lab in (("France", "Paris", "Rome", "true"),
                                                               ("Italy", "Berlin", "Rome", "false"),
                                                               ("Japan", "Tokyo", "Paris", "true"),
                                                               ("Germany", "Tokyo", "Berlin", "false"))]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    r = uc.run("ccs", real, data=str(path), layers="12", restarts=2)
    assert r.n_train + r.n_test == 4 and r.dataset == "pairs"
