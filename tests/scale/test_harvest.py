"""Harvesting into shards with a manifest on the local engine: values, manifest, atomic writes, resume, readers."""

from __future__ import annotations

import json

import pytest
import torch

from uncover.core.errors import UsageError
from uncover.core.progress import Cancelled, Progress
from uncover.scale import Corpus, ShardReader, ShardSource, harvest_corpus, top_contexts
from uncover.scale.manifest import Manifest
from uncover.scale.shards import read_shard

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.2.mlp.hook_post"]
KW = dict(tokens=160, block_len=10, shard_blocks=3, batch_size=2, skip_first=1)


def files(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard_*.safetensors"))}


def test_shards_hold_each_kept_position_of_each_block_as_run_with_cache_gives_it(
    tiny_model, corpus_file, tmp_path, one_thread
):
    m, run = harvest_corpus(tiny_model, HOOKS, corpus_file, tmp_path / "h", **KW)
    assert run["computed"] == [0, 1, 2, 3, 4, 5] and run["skipped"] == []
    assert [s["blocks"] for s in m.shards] == [3, 3, 3, 3, 3, 1] and m.status == "complete"
    on_disk = json.loads((tmp_path / "h" / "manifest.json").read_text())
    assert on_disk["totals"] == {"blocks": 16, "tokens": 160, "rows": 144, "shards": 6}
    assert on_disk["model"]["fingerprint"] == m.model["fingerprint"] and on_disk["corpus"]["kind"] == "jsonl"
    assert on_disk["corpus"]["fingerprint"] == Corpus.open(corpus_file).fingerprint()
    assert on_disk["features"] == {HOOKS[0]: [32], HOOKS[1]: [32], HOOKS[2]: [48]} and on_disk["dtype"] == "float32"
    assert not list((tmp_path / "h").glob(".*tmp"))  # atomic writes leave no temporary files
    for rec in m.shards:  # reference: a full forward pass of each block, one at a time
        acts, tokens = read_shard(tmp_path / "h" / rec["file"])
        _, cache = tiny_model.run_with_cache(tokens, HOOKS)
        for h in HOOKS:
            ref = cache[h][:, 1:].reshape(len(tokens) * 9, -1)
            torch.testing.assert_close(acts[h], ref, rtol=1e-5, atol=1e-6)
        assert rec["rows"] == len(tokens) * 9


def test_a_stopped_job_resumes_from_the_manifest_without_recomputing_finished_shards(
    tiny_model, corpus_file, tmp_path, one_thread
):
    harvest_corpus(tiny_model, HOOKS[:1], corpus_file, tmp_path / "full", **KW)
    prog = Progress(enabled=False)
    prog.listener = lambda event, data: prog.cancel() if event == "step" and data["n"] == 1 else None
    with pytest.raises(Cancelled):
        harvest_corpus(tiny_model, HOOKS[:1], corpus_file, tmp_path / "part", progress=prog, **KW)
    stopped = Manifest.read(tmp_path / "part")
    assert stopped.status == "running" and stopped.done == [0, 1]
    first = {s["file"]: (tmp_path / "part" / s["file"]).stat().st_mtime_ns for s in stopped.shards[:2]}
    m, run = harvest_corpus(tiny_model, HOOKS[:1], corpus_file, tmp_path / "part", **KW)
    assert run["skipped"] == [0, 1] and run["computed"] == [2, 3, 4, 5] and m.status == "complete"
    assert all((tmp_path / "part" / n).stat().st_mtime_ns == t for n, t in first.items())
    assert files(tmp_path / "part") == files(tmp_path / "full")  # bit-identical to an uninterrupted run
    _, again = harvest_corpus(tiny_model, HOOKS[:1], corpus_file, tmp_path / "part", **KW)
    assert again["computed"] == []


def test_other_settings_or_a_foreign_folder_are_refused(tiny_model, corpus_file, tmp_path, one_thread):
    harvest_corpus(tiny_model, HOOKS[:1], corpus_file, tmp_path / "h", **{**KW, "tokens": 30})
    with pytest.raises(UsageError, match=r"settings.block_len: 10 -> 5.*--overwrite"):
        harvest_corpus(tiny_model, HOOKS[:1], corpus_file, tmp_path / "h", **{**KW, "tokens": 30, "block_len": 5})
    m, _ = harvest_corpus(
        tiny_model, HOOKS[:1], corpus_file, tmp_path / "h", overwrite=True, **{**KW, "tokens": 30, "block_len": 5}
    )
    assert m.positions["block_len"] == 5
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty and holds no manifest.json"):
        harvest_corpus(tiny_model, HOOKS[:1], corpus_file, tmp_path / "other", **KW)
    with pytest.raises(UsageError, match="one value per pair of positions"):
        harvest_corpus(tiny_model, ["blocks.0.attn.hook_pattern"], corpus_file, tmp_path / "p", **KW)
    with pytest.raises(UsageError, match="skip_first must be in"):
        harvest_corpus(tiny_model, HOOKS[:1], corpus_file, tmp_path / "s", **{**KW, "skip_first": 10})


def test_readers_stream_rows_blocks_sae_batches_and_top_contexts(tiny_model, corpus_file, tmp_path, one_thread):
    out = tmp_path / "h"
    harvest_corpus(tiny_model, HOOKS, corpus_file, out, **{**KW, "dtype": "bfloat16"})
    r = ShardReader(out)
    allrows = torch.cat([read_shard(out / s["file"], [HOOKS[2]])[0][HOOKS[2]] for s in r.records])
    assert allrows.dtype == torch.bfloat16 and allrows.shape == (144, 48)
    batches = list(r.rows(HOOKS[2], 50))
    assert [len(b) for b in batches] == [50, 50, 44] and torch.equal(torch.cat(batches), allrows)
    # the SAE adapter: deterministic batches; one epoch visits every full batch of every shard once
    src = ShardSource(out, HOOKS[2], batch_size=9, seed=3)
    epoch = torch.cat([src.batch(s) for s in range(src.steps_per_epoch)])
    assert src.steps_per_epoch == 16 and src.d == 48
    assert sorted(epoch.flatten().tolist()) == sorted(allrows.float().flatten().tolist())
    assert torch.equal(ShardSource(out, HOOKS[2], 9, seed=3).batch(5), src.batch(5))
    from uncover.sae import SAEConfig, TopKSAE, train_sae
    from uncover.sae.train import TrainConfig

    res = train_sae(
        TopKSAE(SAEConfig(d_in=48, d_sae=64, architecture="topk", k=4)), src, TrainConfig(steps=5), progress=False
    )
    assert res.tokens == 5 * 9 and res.metrics[-1]["step"] == 4
    # top-activating contexts against a brute-force top-k over every kept position
    top = top_contexts(tiny_model, out, HOOKS[2], [3, 17], k=4, window=(2, 1))
    vals = torch.cat([v for v, _ in r.blocks(HOOKS[2])])  # [blocks, block_len, 48], zeros before skip_first
    kept = vals[:, 1:, [3, 17]].reshape(-1, 2)
    torch.testing.assert_close(top.values, kept.topk(4, dim=0).values.T)
    b, p = int(top.block[0, 0]), int(top.pos[0, 0])
    assert p >= 1 and vals[b, p, 3] == top.values[0, 0]
    with pytest.raises(UsageError, match="harvested: blocks.0.hook_resid_post"):
        ShardSource(out, "blocks.1.hook_resid_post", 9)


def test_sae_train_operation_trains_on_a_harvest_directory(tiny_model, corpus_file, tmp_path, one_thread):
    """``uncover sae train --harvest DIR`` streams the harvest's shards: the same SAE as train_sae on ShardSource."""
    import uncover as uc
    from uncover.sae import SAEConfig, TopKSAE, train_sae
    from uncover.sae.train import TrainConfig

    out = tmp_path / "h"
    harvest_corpus(tiny_model, HOOKS[:1], corpus_file, out, **KW)
    res = uc.run(
        "sae train",
        tiny_model,
        out=tmp_path / "run",
        harvest=out,
        hook=HOOKS[0],
        steps=4,
        batch_size=8,
        expansion=2,
        k=4,
        checkpoint_every=0,
        progress=False,
    )
    ref = train_sae(
        TopKSAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4), seed=0),
        ShardSource(out, HOOKS[0], 8, 0),
        TrainConfig(steps=4, checkpoint_every=0),
        progress=False,
    )
    assert torch.equal(res.sae.W_dec, ref.sae.W_dec) and res.tokens == 4 * 8
    with pytest.raises(UsageError, match="give one"):
        uc.run("sae train", tiny_model, out=tmp_path / "run2", harvest=out, corpus=corpus_file, progress=False)


@pytest.mark.e2e
def test_real_model_shards_match_the_sae_store_and_the_manifest_fingerprint_is_provenances(real, tmp_path):
    from uncover.ops.provenance import weights_fingerprint
    from uncover.sae.store import harvest as sae_harvest

    hook = "blocks.10.hook_resid_post"
    m, _ = harvest_corpus(real, [hook], None, tmp_path / "h", tokens=256, block_len=32, shard_blocks=4)
    assert m.model["fingerprint"] == weights_fingerprint(real.model)  # core's copy is the provenance function
    tokens = torch.cat([t for _, _, t in ShardReader(tmp_path / "h").shards()])
    ref = sae_harvest(real, hook, tokens, batch_size=8, skip_first=1)  # the SAE store's own harvest
    torch.testing.assert_close(torch.cat(list(ShardReader(tmp_path / "h").rows(hook, 10_000))), ref)
