"""The Ray engine: shards bit-identical to the local engine's, killed workers replaced with nothing lost or
duplicated, stopped jobs resumed from the manifest without recomputing finished shards, sweeps equal to the local
ones, and the operations' ``--engine ray``. One local Ray for the module (3 logical CPUs: the module's two workers
and one for the CLI's own engine); workers load the tiny model from its directory (nothing is downloaded)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from tests.conftest import V
from tests.scale.test_sweeps import MIXED, PAIRS, _blocks
from uncover.core.progress import Cancelled, Progress
from uncover.scale import LocalEngine, ModelSpec, RayEngine, harvest_corpus
from uncover.scale.manifest import Manifest
from uncover.scale.ops import PatchSettings, circuit_sweep, contexts_sweep, patching_sweep, perplexity_sweep

ray = pytest.importorskip("ray")

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.mlp.hook_post"]
KW = dict(tokens=200, block_len=10, shard_blocks=2, batch_size=2, skip_first=1)


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default 15 starves the workers on a busy machine
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def engine(local_ray, tiny_model):
    eng = RayEngine(ModelSpec.of(tiny_model), workers=2, threads=1)
    eng.start()
    yield eng
    eng.close()


def files(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard_*.safetensors"))}


def test_ray_shards_are_bit_identical_to_the_local_engines(engine, tiny_model, corpus_file, tmp_path, one_thread):
    local, _ = harvest_corpus(tiny_model, HOOKS, corpus_file, tmp_path / "local", **KW)
    remote, run = harvest_corpus(tiny_model, HOOKS, corpus_file, tmp_path / "ray", engine=engine, **KW)
    assert run["computed"] == list(range(10)) and remote.status == "complete"
    assert files(tmp_path / "ray") == files(tmp_path / "local") and len(files(tmp_path / "ray")) == 10
    assert [s["digest"] for s in remote.shards] == [s["digest"] for s in local.shards]
    workers = {s["worker"] for s in remote.shards}
    assert len(workers) == 2 and all(w.endswith(tuple(f":{p}" for p in engine.pids)) for w in workers)
    assert Manifest.read(tmp_path / "ray").engine["name"] == "ray"


def test_killed_workers_are_replaced_and_the_job_completes_with_nothing_lost_or_duplicated(
    engine, tiny_model, corpus_file, tmp_path, one_thread
):
    harvest_corpus(tiny_model, HOOKS, corpus_file, tmp_path / "local", **KW)
    replaced, killed = engine.replaced, []

    def kill(event, data):
        if event == "step" and data["n"] == 0:  # a worker's process dies with two tasks in flight
            killed.append(engine.pids[0])
            os.kill(engine.pids[0], signal.SIGKILL)

    m, run = harvest_corpus(
        tiny_model,
        HOOKS,
        corpus_file,
        tmp_path / "ray",
        engine=engine,
        progress=Progress(enabled=False, listener=kill),
        **KW,
    )
    assert engine.replaced == replaced + 1 and killed[0] not in engine.pids
    assert sorted(run["computed"]) == list(range(10)) and len(run["computed"]) == 10  # each shard recorded once
    assert m.done == list(range(10)) and m.totals()["rows"] == 20 * 9
    assert files(tmp_path / "ray") == files(tmp_path / "local")
    assert not list((tmp_path / "ray").glob(".*tmp"))


def test_a_sweep_on_ray_equals_the_local_sweep(engine, tiny_model, one_thread):
    tokens = torch.randint(3, V, (6, 12), generator=torch.Generator().manual_seed(0))
    local = perplexity_sweep(LocalEngine(tiny_model), tokens, shard_size=2)
    remote = perplexity_sweep(engine, tokens, shard_size=2)
    assert remote.partials == local.partials and remote.value == local.value


def test_pair_and_corpus_sweeps_on_ray_equal_the_local_ones(engine, tiny_model, one_thread):
    settings = PatchSettings("resid_pre", "pos", method="attribution")
    assert torch.equal(
        patching_sweep(engine, PAIRS, settings, shard_size=2).value,
        patching_sweep(LocalEngine(tiny_model), PAIRS, settings, shard_size=2).value,
    )
    for method in ("eap", "eap-ig"):
        remote = circuit_sweep(engine, tiny_model, MIXED, method=method, steps=2, shard_size=4)
        local = circuit_sweep(LocalEngine(tiny_model), tiny_model, MIXED, method=method, steps=2, shard_size=4)
        assert torch.equal(remote.value.scores, local.value.scores) and remote.value.meta["engine"]["name"] == "ray"
    kw = dict(k=4, batch_size=4, window=(2, 1), shard_blocks=8, sample=8)
    remote = contexts_sweep(engine, tiny_model, "blocks.0.mlp.hook_post", _blocks(), **kw).value
    local = contexts_sweep(LocalEngine(tiny_model), tiny_model, "blocks.0.mlp.hook_post", _blocks(), **kw).value
    for f in ("values", "block", "pos", "windows", "sample", "density", "mean"):
        assert torch.equal(getattr(remote, f), getattr(local, f)), f


def _stamps(out, indices) -> dict[int, tuple[int, int]]:
    """Each shard file's inode and modification time: a recomputed shard is a new file renamed into place."""
    return {i: ((st := (out / f"shard_{i:05d}.safetensors").stat()).st_ino, st.st_mtime_ns) for i in indices}


def _resume_and_check(engine, tiny_model, corpus_file, tmp_path):
    """Run the stopped job again: it computes only the shards not done, and ends with the uninterrupted shards."""
    out = tmp_path / "ray"
    done = Manifest.read(out).done
    assert 0 < len(done) < 10 and Manifest.read(out).status == "running"
    before = _stamps(out, done)
    m, run = harvest_corpus(tiny_model, HOOKS, corpus_file, out, engine=engine, **KW)
    assert run["skipped"] == done and sorted(run["computed"]) == sorted(set(range(10)) - set(done))  # no recompute
    assert _stamps(out, done) == before and m.status == "complete" and m.done == list(range(10))
    harvest_corpus(tiny_model, HOOKS, corpus_file, tmp_path / "local", **KW)
    assert files(out) == files(tmp_path / "local")
    assert [s["digest"] for s in m.shards] == [s["digest"] for s in Manifest.read(tmp_path / "local").shards]


def test_a_ray_job_whose_shard_task_fails_resumes_from_the_manifest(
    engine, tiny_model, corpus_file, tmp_path, one_thread
):
    out = tmp_path / "ray"

    def block_shard_9(event, data):  # shard 9 is submitted only after 6 results: its file becomes unwritable
        if event == "step" and data["n"] == 0:
            (out / "shard_00009.safetensors").mkdir()

    with pytest.raises(IsADirectoryError):  # raised on a worker, re-raised on the driver
        harvest_corpus(
            tiny_model,
            HOOKS,
            corpus_file,
            out,
            engine=engine,
            progress=Progress(enabled=False, listener=block_shard_9),
            **KW,
        )
    assert 9 not in Manifest.read(out).done
    (out / "shard_00009.safetensors").rmdir()
    _resume_and_check(engine, tiny_model, corpus_file, tmp_path)


def test_a_cancelled_ray_job_resumes_from_the_manifest(engine, tiny_model, corpus_file, tmp_path, one_thread):
    prog = Progress(enabled=False)
    prog.listener = lambda event, data: prog.cancel() if event == "step" and data["n"] == 3 else None
    with pytest.raises(Cancelled):
        harvest_corpus(tiny_model, HOOKS, corpus_file, tmp_path / "ray", engine=engine, progress=prog, **KW)
    assert len(Manifest.read(tmp_path / "ray").done) == 4  # shards recorded before the cancel took effect
    _resume_and_check(engine, tiny_model, corpus_file, tmp_path)


def test_the_cli_runs_a_sweep_on_ray(engine, tiny_dir, tmp_path, one_thread):
    """``--engine ray`` comes from the declaration (no per-surface code): here it joins the module's Ray."""
    import json

    from typer.testing import CliRunner

    from uncover.cli.main import build_app

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"clean": p.clean, "corrupt": p.corrupt, "answer": p.answer, "wrong": p.wrong}) + "\n"
            for p in MIXED
        ),
        encoding="utf-8",
    )
    res = CliRunner().invoke(
        build_app(),
        [
            "circuit-sweep",
            "--model",
            str(tiny_dir),
            "--pairs-file",
            str(pairs),
            "--shard-size",
            "4",
            "--edges",
            "7",
            "--engine",
            "ray",
            "--workers",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["provenance"]["config"]["engine"] == "ray"


def test_few_shards_are_spread_over_the_workers(engine, tiny_model, corpus_file, tmp_path, one_thread):
    """Items go round robin: two shards run on two workers at once, not queued on the first one."""
    m, _ = harvest_corpus(tiny_model, HOOKS, corpus_file, tmp_path / "two", engine=engine, **{**KW, "tokens": 40})
    assert len(m.shards) == 2 and len({s["worker"] for s in m.shards}) == 2


def test_an_edit_sweep_on_ray_equals_the_local_one(engine, tiny_model, tmp_path, one_thread):
    from tests.scale.test_sweeps import FACTS
    from uncover.editing.rome import RomeConfig
    from uncover.scale.ops import RomeEdit, edit_sweep

    edit = RomeEdit(1, 256, str(tmp_path), RomeConfig(steps=4, prefixes=1, prefix_tokens=3))
    local = edit_sweep(LocalEngine(tiny_model), FACTS, edit, shard_size=2).value  # writes the key statistics once
    remote = edit_sweep(engine, FACTS, edit, shard_size=2).value  # workers read them from the same folder
    assert remote.rows == local.rows and remote.scores() == local.scores()
