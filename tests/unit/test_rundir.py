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


# ---- every training operation with a run directory (issue 13, new probes) ---------------------------
def _configs():
    from uncover.diffing.ops import CrosscoderConfig
    from uncover.transcoders.ops import TranscoderTrainConfig

    cc = {"edit_subject": "The Eiffel Tower", "edit_target": " Rome", "edit_method": "kn", "edit_layer": 1}
    return [(SAETrainConfig, {}, "sae"), (TranscoderTrainConfig, {"layers": [1]}, "transcoders"),
            (CrosscoderConfig, cc, "sae")]


@pytest.mark.parametrize("i", range(3), ids=["sae train", "transcoder train", "crosscoder"])
def test_every_run_directory_refuses_mixing_runs(tmp_path, i):
    from uncover.core.rundir import begin_run

    cls, extra, artefact = _configs()[i]
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "trainer_state.json").write_text("{}")
    (out / artefact).mkdir()
    settings = cls(out=tmp_path / "fresh", **extra).run_settings()
    begin_run(out, {**settings, "lr": 0.002}, [], resume=False)
    with pytest.raises(UsageError, match="already holds a run; --resume to continue it, --overwrite"):
        cls(out=out, **extra)
    assert cls(out=out, overwrite=True, **extra).overwrite
    assert cls(out=out, resume=True, **extra).lr == 0.002  # the run's value
    with pytest.raises(UsageError, match=r"lr 0.002 \(run\) vs 0.5 \(now\)"):
        cls(out=out, resume=True, lr=0.5, **extra)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        cls(out=tmp_path / "file", **extra)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="resume"):  # nothing to resume: refused before any work
        cls(out=tmp_path / "empty", resume=True, **extra)


def test_a_resumed_run_without_a_record_gets_one(tmp_path):
    from uncover.core.rundir import begin_run
    from uncover.transcoders.ops import TranscoderTrainConfig

    out = tmp_path / "run"
    (out / "transcoders").mkdir(parents=True)  # a run from before run.json existed
    cfg = TranscoderTrainConfig(out=out, resume=True, layers=[1], lr=0.003)
    begin_run(out, cfg.run_settings(), [], resume=True)
    assert stored_settings(out)["lr"] == 0.003
    with pytest.raises(UsageError, match=r"lr 0.003 \(run\) vs 0.5 \(now\)"):
        TranscoderTrainConfig(out=out, resume=True, layers=[1], lr=0.5)
