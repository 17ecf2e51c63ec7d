"""The Ray engine: shards bit-identical to the local engine's, killed workers replaced with nothing lost or
duplicated, sweeps equal to the local ones. One local Ray (2 CPUs) for the module; workers load the tiny model
from its directory (nothing is downloaded)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from tests.conftest import V
from uncover.core.progress import Progress
from uncover.scale import LocalEngine, ModelSpec, RayEngine, harvest_corpus
from uncover.scale.manifest import Manifest
from uncover.scale.ops import perplexity_sweep

ray = pytest.importorskip("ray")

HOOKS = ["blocks.0.hook_resid_post", "blocks.2.mlp.hook_post"]
KW = dict(tokens=200, block_len=10, shard_blocks=2, batch_size=2, skip_first=1)


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default 15 starves the workers on a busy machine
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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
        engine, tiny_model, corpus_file, tmp_path, one_thread):
    harvest_corpus(tiny_model, HOOKS, corpus_file, tmp_path / "local", **KW)
    replaced, killed = engine.replaced, []

    def kill(event, data):
        if event == "step" and data["n"] == 0:  # a worker's process dies with two tasks in flight
            killed.append(engine.pids[0])
            os.kill(engine.pids[0], signal.SIGKILL)

    m, run = harvest_corpus(tiny_model, HOOKS, corpus_file, tmp_path / "ray", engine=engine,
                            progress=Progress(enabled=False, listener=kill), **KW)
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
