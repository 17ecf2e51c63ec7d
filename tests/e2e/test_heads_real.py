"""Attention heads of the embedded SmolLM2-135M: induction, previous-token heads and their circuit.

What the model shows (docs/heads.md): the loss on a second repeat of random tokens falls
from ~14.7 to ~4.7 nats; L18H6, L17H4, L17H3 and L17H5 are induction heads (0.6-0.85);
L16H0 is a previous-token head (0.88) and the strongest K-composition writer into them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from uncover.heads.composition import composition_scores
from uncover.heads.detectors import copying_scores, detect
from uncover.heads.induction import induction_loss

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def found(real):
    with torch.no_grad():
        return detect(real, n=4, seq_len=20, seed=1)


def test_second_repeat_loss_is_much_lower(real):
    r = induction_loss(real, n=4, seq_len=20, seed=2)
    assert r.second < 0.5 * r.first, r.summary()
    assert r.first - r.second > 5.0  # nats


def test_induction_heads_exist_beyond_layer_zero(found):
    ind = found["induction"]
    top = ind.top(4)
    assert all(layer >= 1 and s > 0.5 for layer, _, s in top), ind.summary()
    assert (18, 6) in [(layer, h) for layer, h, _ in top[:2]]
    # an induction head is not a previous-token or duplicate-token head
    for layer, h, _ in top:
        assert found["previous"].scores[layer, h] < 0.2 and found["duplicate"].scores[layer, h] < 0.2
    assert float(ind.scores.median()) < 0.05  # most heads are not induction heads


def test_previous_token_heads_exist(found):
    prev = found["previous"]
    assert sum(s > 0.7 for *_, s in prev.top(10)) >= 3, prev.summary()
    assert prev.top(1)[0][:2] == (16, 0)


def test_top_induction_heads_copy_and_read_keys_from_a_previous_token_head(real, found):
    top = [(layer, h) for layer, h, _ in found["induction"].top(3)]
    cop = copying_scores(real)
    assert all(float(cop.scores[layer, h]) > 0 for layer, h in top), [float(cop.scores[x]) for x in top]
    # K-composition: the previous-token head L16H0 is the strongest earlier writer into each
    # L17 induction head, far above random matrices (the induction circuit of Olsson et al.)
    comp = composition_scores(real, "k", readers=[17])
    prev = found["previous"]
    for layer, h in top:
        if layer != 17:
            continue
        col = torch.nan_to_num(comp.scores[:, :, layer, h], nan=-1.0)
        src = divmod(int(col.argmax()), real.cfg.n_heads)
        assert src == (16, 0) and float(prev.scores[src]) > 0.8
        assert float(col.max()) > 2.5 * comp.baseline


def test_cli_heads_json_and_usage_error():
    exe = [sys.executable, "-m", "uncover.cli.main", "heads"]
    p = subprocess.run([*exe, "--detect", "previous", "--n", "2", "--json"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["kind"] == "HeadScores" and doc["records"][0]["head_name"] == "L16H0"
    p = subprocess.run([*exe, "--pattern", "a b a b", "--head", "40.1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "valid layers: 0 .. 29" in p.stderr
