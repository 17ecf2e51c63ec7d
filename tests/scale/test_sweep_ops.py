"""The sweep operations (``patch-sweep``, ``circuit-sweep``, ``contexts-sweep``) on the tiny model, local engine:
their configs refuse bad input in one line, their results equal the sweeps' (and so the single-process ones),
and save and load back bit-exactly. The same operations on the Ray engine are in ``test_ray.py``."""

from __future__ import annotations

import json

import pytest
import torch

import uncover as uc
from tests.scale.test_sweeps import MIXED, PAIRS
from uncover.core.errors import UsageError
from uncover.core.persist import load_result
from uncover.scale.engines import LocalEngine
from uncover.scale.ops import (
    CircuitSweepConfig,
    ContextsSweepConfig,
    PatchSettings,
    PatchSweep,
    PatchSweepConfig,
    patching_sweep,
)


@pytest.fixture
def pairs_file(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text(
        "".join(
            json.dumps({"clean": q.clean, "corrupt": q.corrupt, "answer": q.answer, "wrong": q.wrong}) + "\n"
            for q in MIXED
        ),
        encoding="utf-8",
    )
    return p


def test_configs_refuse_what_does_not_fit_in_one_line():
    with pytest.raises(UsageError, match=r"per \(--per\) 'pos' does not fit hook \(--hook\) 'z'; valid: head, "):
        PatchSweepConfig(hook="z", per="pos")
    with pytest.raises(UsageError, match="method"):
        PatchSweepConfig(method="exact")
    with pytest.raises(UsageError, match="method"):
        CircuitSweepConfig(method="acdc")
    with pytest.raises(UsageError, match=r"n_pairs \(--pairs\) must be >= 1"):
        CircuitSweepConfig(n_pairs=0)
    with pytest.raises(UsageError, match="engine"):
        CircuitSweepConfig(engine="spark")
    with pytest.raises(UsageError, match=r"multiple of batch_size \(--batch-size\) 8"):
        ContextsSweepConfig(shard_blocks=12)
    with pytest.raises(UsageError, match="at least one block of 64"):
        ContextsSweepConfig(tokens=10)


def test_sweep_pairs_reads_a_file_and_refuses_unknown_tasks(tiny_model, pairs_file):
    from uncover.scale.ops import sweep_pairs

    assert sweep_pairs(tiny_model, n=4, pairs_file=pairs_file) == MIXED[:4]
    with pytest.raises(UsageError, match="unknown task 'ioj'; valid: ioi, facts, greater_than"):
        sweep_pairs(tiny_model, "ioj")


def test_patch_sweep_operation_gives_the_sweeps_grids(tiny_model, pairs_file, tmp_path, one_thread):
    r = uc.run(
        "patch-sweep",
        tiny_model,
        pairs_file=pairs_file,
        n_pairs=5,
        hook="resid_pre",
        per="pos",
        method="attribution",
        shard_size=2,
    )
    ref = patching_sweep(LocalEngine(tiny_model), PAIRS, PatchSettings("resid_pre", "pos", method="attribution"))
    assert isinstance(r, PatchSweep) and torch.equal(r.grids, ref.value) and len(r.pairs) == 5
    assert r.meta["engine"]["name"] == "local" and len(r.meta["shard_seconds"]) == 3
    frame = r.to_frame()
    assert len(frame) == r.grids[0].numel()
    assert torch.allclose(torch.tensor(frame["value"], dtype=torch.float32), r.grids.mean(0).flatten())
    assert "Attribution patching (denoise) of resid_pre per pos, mean of 5 pairs" in r.summary()
    r.plot()
    back = load_result(r.save(tmp_path / "r.safetensors"))
    assert torch.equal(back.grids, r.grids) and back.pairs == r.pairs


def test_circuit_sweep_operation_keeps_the_top_edges_of_the_sweep(tiny_model, pairs_file, one_thread):
    from uncover.scale.ops import circuit_sweep

    c = uc.run("circuit-sweep", tiny_model, pairs_file=pairs_file, shard_size=4, edges=10)
    ref = circuit_sweep(LocalEngine(tiny_model), tiny_model, MIXED, shard_size=4).value
    assert c.n_edges == 10 and torch.equal(c.scores, ref.scores) and c.edges() == ref.top(10).edges()
    assert c.meta["task"] == str(pairs_file) and c.meta["prompts"] == 6


def test_contexts_sweep_operation_reads_a_corpus_file(tiny_model, corpus_file, one_thread):
    from uncover.neurons.top import top_activations
    from uncover.scale.corpora import Corpus, token_blocks

    r = uc.run(
        "contexts-sweep",
        tiny_model,
        hook="blocks.2.mlp.hook_post",
        units=[1, 2],
        k=3,
        corpus=corpus_file,
        tokens=160,
        block_len=10,
        batch_size=2,
        shard_blocks=4,
    )
    blocks = torch.stack(list(token_blocks(tiny_model, Corpus.open(corpus_file), 10, 16)))
    ref = top_activations(tiny_model, 2, [1, 2], tokens=blocks, k=3, batch_size=2, sample=0)
    assert torch.equal(r.tokens, blocks) and torch.equal(r.values, ref.values) and torch.equal(r.pos, ref.pos)
    assert r.units == ["L2N1", "L2N2"] and r.provenance.config["engine"] == "local"
    with pytest.raises(UsageError, match=r"units \(--units\) \[48\] out of range; blocks.2.mlp.hook_post has 48 "):
        uc.run("contexts-sweep", tiny_model, hook="blocks.2.mlp.hook_post", units=[1, 48], tokens=160, block_len=10)


def test_contexts_sweep_from_the_command_line(tiny_dir, corpus_file, one_thread):
    from typer.testing import CliRunner

    from uncover.cli.main import build_app

    args = [
        "contexts-sweep",
        "--model",
        str(tiny_dir),
        "--hook",
        "blocks.2.mlp.hook_post",
        "--units",
        "1,2",
        "--k",
        "3",
        "--corpus",
        str(corpus_file),
        "--tokens",
        "160",
        "--block-len",
        "10",
        "--batch-size",
        "2",
        "--shard-blocks",
        "4",
        "--json",
    ]
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["provenance"]["config"]["units"] == [1, 2] and doc["provenance"]["config"]["engine"] == "local"
    bad = CliRunner().invoke(build_app(), ["contexts-sweep", "--model", str(tiny_dir), "--shard-blocks", "12"])
    assert isinstance(bad.exception, UsageError) and "multiple of batch_size" in str(bad.exception)  # before loading


def test_perplexity_operation_equals_pruning_perplexity_over_the_corpus(tiny_model, corpus_file, tmp_path, one_thread):
    import math

    from uncover.pruning.evaluate import perplexity
    from uncover.scale.corpora import Corpus, token_blocks
    from uncover.scale.ops.perplexity import PerplexityConfig

    r = uc.run("perplexity", tiny_model, corpus=corpus_file, tokens=160, block_len=10, shard_blocks=3)
    blocks = torch.stack(list(token_blocks(tiny_model, Corpus.open(corpus_file), 10, 16)))
    ref = perplexity(tiny_model, blocks)
    assert r.blocks == 16 and r.tokens == 16 * 9 and len(r.shards) == 6  # 3 + 3 + 3 + 3 + 3 + 1 blocks
    assert math.isclose(r.perplexity, ref, rel_tol=1e-9)
    assert [s["blocks"] for s in r.shards] == [3, 3, 3, 3, 3, 1]
    # each shard's perplexity is its own blocks' perplexity
    assert math.isclose(r.shards[-1]["perplexity"], perplexity(tiny_model, blocks[15:]), rel_tol=1e-9)
    assert len(r.to_frame()) == 6 and "Perplexity" in r.summary()
    back = load_result(r.save(tmp_path / "ppl.json"))
    assert back.perplexity == r.perplexity and back.shards == r.shards
    with pytest.raises(UsageError, match="at least one block of 128"):
        PerplexityConfig(tokens=100)
    with pytest.raises(UsageError, match=r"shard_blocks \(--shard-blocks\) must be >= 1"):
        PerplexityConfig(shard_blocks=0)
