"""Run directories: a new run never replaces an old one by accident, and a resume keeps the run's settings."""

from __future__ import annotations

import pytest

from uncover.core.errors import UsageError
from uncover.core.rundir import start_run, stored_settings
from uncover.sae.ops import RUN_FILES, SAETrainConfig


def _finished_run(tmp_path, **settings):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "trainer_state.json").write_text("{}")
    (out / "sae").mkdir()
    base = SAETrainConfig(out=tmp_path / "fresh").run_settings()
    start_run(out, {**base, **settings}, [])
    return out


def test_a_new_run_into_a_used_folder_is_refused_unless_overwrite(tmp_path):
    out = _finished_run(tmp_path)
    with pytest.raises(UsageError, match="already holds a run; --resume to continue it, --overwrite"):
        SAETrainConfig(out=out)
    assert SAETrainConfig(out=out, overwrite=True).overwrite
    with pytest.raises(UsageError, match="give one"):
        SAETrainConfig(out=out, overwrite=True, resume=True)


def test_resume_takes_the_runs_settings_and_refuses_explicit_changes(tmp_path):
    out = _finished_run(tmp_path, hook="blocks.3.hook_resid_post", k=16, arch="topk")
    cfg = SAETrainConfig(out=out, resume=True, steps=2000)  # hook and k left at their defaults
    assert (cfg.hook, cfg.k, cfg.steps) == ("blocks.3.hook_resid_post", 16, 2000)
    with pytest.raises(UsageError) as e:
        SAETrainConfig(out=out, resume=True, k=8, hook="blocks.4.hook_resid_post")
    assert "k 16 (run) vs 8 (now)" in str(e.value) and "blocks.4" in str(e.value)


def test_start_run_clears_an_overwritten_run(tmp_path):
    out = _finished_run(tmp_path)
    (out / "metrics.csv").write_text("step\n")
    start_run(out, {"hook": "x"}, RUN_FILES)
    assert sorted(p.name for p in out.iterdir()) == ["run.json"] and stored_settings(out) == {"hook": "x"}
