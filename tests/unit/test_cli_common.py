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


def test_every_model_command_takes_device_map_and_offload_folder(monkeypatch, tmp_path):
    """``--device-map`` and ``--offload-folder`` reach ``uncover.load``; operations without a model lack them."""
    import uncover
    from uncover.cli import common
    from uncover.cli.main import main

    seen = {}

    def fake_load(name=None, **kw):
        seen.update(kw)
        raise UncoverError("stop here")

    monkeypatch.setattr(uncover, "load", fake_load)
    with pytest.raises(SystemExit) as e:
        main(["lens", "x", "--device-map", "sequential", "--offload-folder", str(tmp_path)])
    assert e.value.code == 2
    assert seen["device_map"] == "sequential" and str(seen["offload_folder"]) == str(tmp_path)
    seen.clear()
    with pytest.raises(UncoverError):
        common.load_model(None, device="cpu")
    assert "device_map" not in seen and seen["device"] == "cpu"
    with pytest.raises(SystemExit) as e:
        main(["superposition", "--device-map", "auto"])  # needs no model: no such option
    assert e.value.code == 2
