"""The clean/corrupt pair of patch-style operations, resolved without a model (formerly a CLI helper)."""

from __future__ import annotations

import pytest

from uncover.core.errors import UncoverError
from uncover.data.tasks import task_pair as resolve_pair


def test_explicit_pair_passes_through_and_missing_parts_are_named():
    assert resolve_pair(None, None, "a b", "a c", " x", " y") == ("a b", "a c", " x", " y")
    with pytest.raises(UncoverError, match=r"missing --corrupt, --wrong \(or give --task\)"):
        resolve_pair(None, None, "a b", None, " x", None)
    with pytest.raises(UncoverError, match="unknown task 'iio'; valid: ioi, facts, greater_than"):
        resolve_pair(None, "iio", None, None, None, None)
