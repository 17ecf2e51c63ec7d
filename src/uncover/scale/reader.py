"""Reading a shard directory back, one shard in memory at a time.

:class:`ShardReader` streams the done shards of a harvest (its manifest says which): per shard
(values and token blocks), as consecutive row batches (for probes and statistics), or as
``[blocks, positions, features]`` values with their tokens (for top-activating contexts,
:func:`top_contexts`). :class:`ShardSource` is the adapter the SAE trainer consumes
(``uncover.sae.train_sae(sae, ShardSource(dir, hook, batch_size), cfg)``): deterministic
batches ``batch(step)``, shard order and rows reshuffled every epoch, one shard in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError, UsageError
from uncover.scale.manifest import Manifest
from uncover.scale.shards import read_shard

if TYPE_CHECKING:
    from uncover.hooks.contexts import TopActivations
    from uncover.hooks.hooked import HookedModel


class ShardReader:
    """The shards of a harvest directory, streamed.

    >>> import tempfile
    >>> from uncover.scale.harvest import harvest_corpus
    >>> out = tempfile.mkdtemp()
    >>> _ = harvest_corpus(model, ["hook_embed"], None, out, tokens=48, block_len=16, shard_blocks=2)
    >>> r = ShardReader(out)
    >>> [v.shape for v in r.rows("hook_embed", 20)]
    [torch.Size([20, 576]), torch.Size([20, 576]), torch.Size([5, 576])]
    """

    def __init__(self, path: str | Path, *, complete: bool = True):
        self.path = Path(path)
        self.manifest = Manifest.read(self.path)
        if complete and self.manifest.status != "complete":
            raise UsageError(
                f"{self.path}: the harvest is not complete ({len(self.manifest.done)} of "
                f"{len(self.manifest.shards)} shards done); run it again to resume, or read with "
                "complete=False"
            )
        self.records = [s for s in self.manifest.shards if s["status"] == "done"]

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest.hooks)

    def __len__(self) -> int:
        return len(self.records)

    def _hook(self, hook: str) -> str:
        if hook not in self.manifest.hooks:
            raise UsageError(f"{self.path}: no values for {hook!r}; harvested: {', '.join(self.manifest.hooks)}")
        return hook

    def n_rows(self) -> int:
        return sum(int(s["rows"]) for s in self.records)

    def shards(
        self, hooks: list[str] | None = None
    ) -> Iterator[tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor]]:
        """``(record, hook -> [rows, features], tokens [blocks, block_len])`` per done shard, in order."""
        hooks = [self._hook(h) for h in hooks] if hooks is not None else None
        for rec in self.records:
            acts, tokens = read_shard(self.path / rec["file"], hooks)
            yield rec, acts, tokens

    def rows(self, hook: str, batch_size: int) -> Iterator[torch.Tensor]:
        """Consecutive batches ``[batch_size, features]`` of one hook's rows (the last may be shorter)."""
        buf: list[torch.Tensor] = []
        n = 0
        for _, acts, _ in self.shards([hook]):
            buf.append(acts[hook])
            n += len(acts[hook])
            while n >= batch_size:
                allrows = torch.cat(buf)
                yield allrows[:batch_size]
                buf, n = [allrows[batch_size:]], n - batch_size
        if n:
            yield torch.cat(buf)

    def blocks(self, hook: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(values [blocks, block_len, features], tokens [blocks, block_len])`` per shard; positions before
        ``skip_first`` (not harvested) hold zeros."""
        skip, per = int(self.manifest.positions["skip_first"]), self.manifest.rows_per_block
        for _, acts, tokens in self.shards([hook]):
            v = acts[hook].float().view(len(tokens), per, -1)
            yield torch.cat([v.new_zeros(len(tokens), skip, v.shape[-1]), v], 1), tokens


def top_contexts(
    model: HookedModel,
    path: str | Path,
    hook: str,
    units: list[int] | None = None,
    k: int = 10,
    window: tuple[int, int] = (8, 2),
) -> TopActivations:
    """Top-activating contexts of ``units`` (feature indices; default all) at ``hook``, streamed over the shards.

    Positions that were not harvested (``skip_first``) never count.

    >>> import tempfile
    >>> from uncover.scale.harvest import harvest_corpus
    >>> out = tempfile.mkdtemp()
    >>> _ = harvest_corpus(model, ["blocks.0.mlp.hook_post"], None, out, tokens=64, block_len=16, shard_blocks=2)
    >>> top = top_contexts(model, out, "blocks.0.mlp.hook_post", [5, 7], k=3)
    >>> top.values.shape
    torch.Size([2, 3])
    """
    from uncover.hooks.contexts import TopActivations
    from uncover.hooks.streaming import StreamingTopK

    reader = ShardReader(path)
    reader._hook(hook)
    d = reader.manifest.features[hook][0]
    idx = list(range(d)) if units is None else list(units)
    bad = [u for u in idx if not 0 <= u < d]
    if bad:
        raise UsageError(f"unit(s) {bad} out of range; {hook} has {d} features (0..{d - 1})")
    skip = int(reader.manifest.positions["skip_first"])
    stream = StreamingTopK(k, len(idx), window)
    all_tokens, positive, total, count = [], torch.zeros(len(idx)), torch.zeros(len(idx), dtype=torch.float64), 0
    for values, tokens in reader.blocks(hook):
        v = values[..., idx]
        kept = v[:, skip:]
        positive += (kept > 0).sum((0, 1)).float()
        total += kept.double().sum((0, 1))
        count += kept.shape[0] * kept.shape[1]
        v[:, :skip] = float("-inf")
        stream.update(v)
        all_tokens.append(tokens)
    if not all_tokens:
        raise UncoverError(f"{path}: no done shards")
    top = TopActivations.from_stream(
        model,
        stream,
        hook,
        [str(u) for u in idx],
        torch.cat(all_tokens),
        positive / max(count, 1),
        (total / max(count, 1)).float(),
    )
    top.windows = torch.nan_to_num(top.windows, neginf=0.0)
    return top


class ShardSource:
    """Batches ``[batch_size, features]`` of one hook from a harvest directory, for ``uncover.sae.train_sae``.

    Deterministic in ``step`` (a resumed training run sees the same batches): each epoch visits the shards in
    a seeded order and each shard's rows in a seeded permutation, holding one shard in memory; rows that do
    not fill a last batch of a shard are left out of that epoch.

    >>> import tempfile
    >>> from uncover.scale.harvest import harvest_corpus
    >>> out = tempfile.mkdtemp()
    >>> _ = harvest_corpus(model, ["blocks.1.hook_resid_post"], None, out, tokens=64, block_len=16, shard_blocks=2)
    >>> src = ShardSource(out, "blocks.1.hook_resid_post", batch_size=10)
    >>> src.steps_per_epoch, src.batch(0).shape, src.d
    (6, torch.Size([10, 576]), 576)
    """

    def __init__(self, path: str | Path, hook: str, batch_size: int, seed: int = 0):
        self.reader = ShardReader(path)
        self.hook, self.batch_size, self.seed = self.reader._hook(hook), batch_size, seed
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        self.per_shard = [int(s["rows"]) // batch_size for s in self.reader.records]
        self.steps_per_epoch = sum(self.per_shard)
        if not self.steps_per_epoch:
            raise UsageError(f"{path}: every shard has fewer rows than one batch of {batch_size}")
        self._cur: tuple[int, int, torch.Tensor] | None = None

    @property
    def d(self) -> int:
        return int(self.reader.manifest.features[self.hook][0])

    def _load(self, epoch: int, shard: int) -> torch.Tensor:
        if self._cur is None or self._cur[:2] != (epoch, shard):
            acts, _ = read_shard(self.reader.path / self.reader.records[shard]["file"], [self.hook])
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + shard)
            rows = acts[self.hook]
            self._cur = (epoch, shard, rows[torch.randperm(len(rows), generator=g)])
        return self._cur[2]

    def batch(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.seed + 31 * epoch)
        for shard in torch.randperm(len(self.per_shard), generator=g).tolist():
            if i < self.per_shard[shard]:
                return self._load(epoch, shard)[i * self.batch_size : (i + 1) * self.batch_size].float()
            i -= self.per_shard[shard]
        raise AssertionError("unreachable")
