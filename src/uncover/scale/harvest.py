"""Harvest activations of a corpus into shards with a manifest, on the local or the Ray engine.

The driver streams the corpus into token blocks, groups ``shard_blocks`` blocks into a
:class:`~uncover.scale.shards.ShardTask`, and hands the tasks to an engine, which runs
:func:`~uncover.scale.shards.compute_shard` (on the model in hand, or on Ray actors that each
hold a copy). After every finished shard the manifest is rewritten atomically. Run again on the
same folder, a job resumes: shards already done (file present, same tokens) are skipped, and a
change of model, corpus, hooks or settings is refused with every difference listed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UsageError
from uncover.core.progress import Progress
from uncover.scale.corpora import Corpus, token_blocks
from uncover.scale.engines import LocalEngine, RayEngine, make_engine
from uncover.scale.manifest import NAME, Manifest, differences
from uncover.scale.shards import DTYPES, ShardTask, check_hooks, compute_shard, shard_name, tokens_digest

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def _identity(model: HookedModel) -> dict[str, Any]:
    from uncover.core.fingerprint import weights_fingerprint

    c = model.cfg
    return {
        "name": model.name,
        "source": getattr(model, "source", None),
        "family": c.family,
        "n_layers": c.n_layers,
        "d_model": c.d_model,
        "dtype": str(model.dtype).removeprefix("torch."),
        "fingerprint": weights_fingerprint(model.model),
    }


def _features(model: HookedModel, hooks: Sequence[str]) -> dict[str, list[int]]:
    from uncover.hooks.harvest import capture

    _, got = capture(model, torch.zeros(1, 2, dtype=torch.long), list(hooks))
    return {h: [int(v[0, 0].numel())] for h, v in got.items()}


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x))


def plan(
    model: HookedModel, corpus: Corpus, manifest: Manifest, out: Path, batch_size: int, skipped: list[int]
) -> Iterator[ShardTask]:
    """The tasks of the shards still to do (the corpus is streamed; done shards are checked and skipped)."""
    s = manifest.settings
    max_blocks = None if s["tokens"] is None else s["tokens"] // s["block_len"]
    blocks: list[torch.Tensor] = []
    index = 0

    def task(rows: list[torch.Tensor]) -> ShardTask | None:
        b = torch.stack(rows)
        old = manifest.shards[index] if index < len(manifest.shards) else None
        if old is not None and old["status"] == "done":
            if old.get("tokens_digest") != tokens_digest(b):
                raise UsageError(
                    f"{out}: shard {index} was harvested from other tokens than the corpus gives now; "
                    "harvest into a new folder (or --overwrite)"
                )
            if (out / old["file"]).is_file():
                skipped.append(index)
                return None
        if old is None:
            manifest.record({"index": index, "file": shard_name(index), "status": "pending", "blocks": len(rows)})
        return ShardTask(index, b, tuple(manifest.hooks), s["skip_first"], manifest.dtype, batch_size, str(out))

    for block in token_blocks(model, corpus, s["block_len"], max_blocks):
        blocks.append(block)
        if len(blocks) == s["shard_blocks"]:
            if (t := task(blocks)) is not None:
                yield t
            blocks, index = [], index + 1
    if blocks:
        if (t := task(blocks)) is not None:
            yield t
        index += 1
    if index == 0:
        raise UsageError(
            f"corpus {corpus.source or 'embedded'} holds fewer tokens than one block of "
            f"{s['block_len']}; use a smaller --block-len or more text"
        )


def harvest_corpus(
    model: HookedModel,
    hooks: Sequence[str],
    corpus: Corpus | str | Path | None,
    out: str | Path,
    *,
    tokens: int | None = None,
    block_len: int = 128,
    shard_blocks: int = 64,
    batch_size: int = 8,
    skip_first: int = 1,
    dtype: str = "float32",
    engine: str | LocalEngine | RayEngine = "local",
    workers: int = 2,
    threads: int = 1,
    ray_address: str | None = None,
    overwrite: bool = False,
    progress: bool | Progress = False,
) -> tuple[Manifest, dict[str, Any]]:
    """Harvest ``hooks`` over ``corpus`` into ``out/shard_*.safetensors`` and ``out/manifest.json``.

    ``tokens``: corpus tokens to read (whole blocks of ``block_len``; default the whole corpus);
    ``shard_blocks``: blocks per shard; ``skip_first``: leading positions of each block not kept;
    ``engine``: ``local``, ``ray`` (``workers`` actors of ``threads`` threads, on a local Ray or
    ``ray_address``) or an engine object. Returns the manifest and a run summary (shards computed
    and skipped, seconds, tokens per second).

    >>> import tempfile
    >>> m, run = harvest_corpus(model, ["blocks.0.hook_resid_post"], None, tempfile.mkdtemp(), tokens=64,
    ...                         block_len=16, shard_blocks=2)
    >>> len(m.shards), m.totals()["rows"], run["computed"]
    (2, 60, [0, 1])
    """
    t0 = time.perf_counter()
    prog = progress if isinstance(progress, Progress) else Progress(enabled=bool(progress))
    out = Path(out)
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if not 0 <= skip_first < block_len:
        raise UsageError(f"skip_first must be in [0, block_len - 1 = {block_len - 1}], got {skip_first}")
    if tokens is not None and tokens < block_len:
        raise UsageError(f"tokens ({tokens}) must be at least one block of {block_len}")
    for name, v in (("block_len", block_len), ("shard_blocks", shard_blocks), ("batch_size", batch_size)):
        if v < 1:
            raise UsageError(f"{name} must be >= 1, got {v}")
    names = check_hooks(model, list(hooks))
    corpus = corpus if isinstance(corpus, Corpus) else Corpus.open(corpus)
    fresh = Manifest(
        _identity(model),
        corpus.describe(),
        names,
        _features(model, names),
        dtype,
        {
            "block_len": block_len,
            "skip_first": skip_first,
            "rows_per_block": block_len - skip_first,
            "layout": "row r: block r // rows_per_block, position skip_first + r % rows_per_block",
        },
        {"tokens": tokens, "block_len": block_len, "shard_blocks": shard_blocks, "skip_first": skip_first},
    )
    fresh = Manifest(**{**fresh.__dict__, **_jsonable({k: getattr(fresh, k) for k in fresh.identity()})})
    if overwrite and (out / NAME).is_file():  # only a harvest's own files: never a folder of other things
        for f in [*out.glob("shard_*.safetensors"), *out.glob(".shard_*.tmp"), out / NAME]:
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if (out / NAME).is_file():
        manifest = Manifest.read(out)
        diff = differences(manifest.identity(), fresh.identity())
        if diff:
            raise UsageError(
                f"{out} holds a harvest with other settings ({'; '.join(diff)}); "
                "use a new --out, or --overwrite to replace it"
            )
    elif any(out.iterdir()):
        raise UsageError(f"{out} is not empty and holds no {NAME}; give an empty or new folder")
    else:
        manifest = fresh
    eng = (
        engine
        if not isinstance(engine, str)
        else make_engine(engine, model, workers=workers, threads=threads, address=ray_address)
    )
    manifest.engine = eng.describe()
    manifest.status = "running"
    manifest.write(out)
    skipped: list[int] = []
    computed: list[int] = []
    try:
        tasks = plan(model, corpus, manifest, out, batch_size, skipped)
        # the number of shards is known up front only with a token budget (and a corpus at least that long)
        total = None if tokens is None else max(0, -(-(tokens // block_len) // shard_blocks) - len(manifest.done))
        for _, rec in eng.map(compute_shard, tasks, progress=prog, total=total, desc=f"harvest ({eng.name})"):
            manifest.record(rec)
            computed.append(rec["index"])
            manifest.write(out)
    finally:
        if isinstance(engine, str):
            eng.close()
    manifest.engine = eng.describe()
    manifest.status = "complete"
    manifest.write(out)
    seconds = time.perf_counter() - t0
    done_tokens = sum(int(manifest.shards[i]["tokens"]) for i in computed)
    return manifest, {
        "computed": sorted(computed),
        "skipped": sorted(skipped),
        "seconds": seconds,
        "tokens_per_second": done_tokens / seconds if seconds else 0.0,
    }
