"""Extractable memorization on the embedded SmolLM2-135M: it continues the opening of Lorem ipsum
(duplicated all over the web) verbatim for a few tokens, and nothing of the same words shuffled.
(Measured: no 8-token suffix of Lorem ipsum, the MIT license or the Zen of Python is reproduced
exactly by this small model; the mean matching prefix separates the real text from its shuffle.)"""

from __future__ import annotations

import json

import pytest

from uncover.dynamics.memorization.scan import builtin_text, extraction_scan

pytestmark = pytest.mark.e2e


def test_lorem_ipsum_is_partly_reproduced_and_its_shuffle_is_not(real, one_thread_no_grad):
    lorem = extraction_scan(real, builtin_text("lorem"), k=16, suffix=8, stride=4, name="lorem")
    control = extraction_scan(real, builtin_text("lorem-shuffled"), k=16, suffix=8, stride=4, name="shuffled")
    first = lorem.windows.iloc[0]  # prefix "Lorem ipsum dolor sit amet, consectetur"
    assert first.generated.startswith(" adipiscing elit"), first.generated
    assert first.match_len >= 2
    assert control.extractable_fraction == 0.0, control.summary()
    assert lorem.windows.match_len.mean() > 2 * control.windows.match_len.mean() + 0.3
    assert (lorem.windows.match_len <= 8).all() and len(lorem.windows) == len(range(16, lorem.n_tokens - 8 + 1, 4))
    d = json.loads(lorem.to_json())
    assert d["kind"] == "ExtractionScanResult" and d["extractable_fraction"] == lorem.extractable_fraction
