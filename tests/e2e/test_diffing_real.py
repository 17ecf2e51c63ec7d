"""``uncover diff`` of a ROME edit on the embedded model (docs/diffing.md): the Eiffel Tower moves to Rome and
only it, the weight delta is one rank-one matrix at the edited layer, and the base is left bit-identical. (Causal
traces are left out to keep it under 30 s: tests/unit/test_diffing.py checks them against causal_trace on tiny
models, and docs/diffing.md shows them on this edit.)"""

from __future__ import annotations

import pytest
import torch

from uncover.diffing import model_diff
from uncover.editing import RomeConfig, rome
from uncover.editing.base import down_proj_path

pytestmark = pytest.mark.e2e

PROMPT, SUBJECT = "{} is in the city of", "The Eiffel Tower"
PROBES = ["The Eiffel Tower is in the city of", "The Louvre is in the city of", "The capital of France is"]


def test_diff_of_a_rome_edit(real, tmp_path):
    e = rome(real, PROMPT, SUBJECT, " Rome", mom2_samples=2048, cache=tmp_path / "stats",
             config=RomeConfig(prefixes=2), progress=False)
    try:
        e.save(tmp_path / "edit")
    finally:
        e.revert()
    layer = e.layers[0]
    key = down_proj_path(real, layer)
    before = dict(real.model.named_parameters())[key].detach().clone()
    d = model_diff(real, str(tmp_path / "edit"), PROBES)
    assert torch.equal(dict(real.model.named_parameters())[key], before)  # the base is restored
    (row,) = d.weight_delta
    assert row["parameter"] == key and row["rank"] == 1 and 0 < row["relative"] < 0.5
    eiffel, louvre, capital = d.predictions
    assert eiffel["base"][0][0] == " Paris" and eiffel["changed"][0][0] == " Rome" and eiffel["top_changed"]
    assert not louvre["top_changed"] and not capital["top_changed"]  # specificity
    assert eiffel["kl"] > 10 * max(louvre["kl"], capital["kl"])
    assert "Rome" in d.cli_text()
