"""Activation stores: the training data of an SAE, in bounded memory.

:func:`harvest` runs the model over token blocks and keeps the value at one hook for every
token (through the harvesting engine, :mod:`uncover.hooks.harvest`: the forward pass stops
right after the hook), either as one tensor or as
safetensors shards written as it goes (``out_dir``), so memory stays at one shard for any
corpus size. Three sources feed the trainer, all deterministic functions of
``(seed, step)`` so that a resumed run sees exactly the batches it would have seen:

- :class:`TensorSource`: an in-memory ``[n, d]`` tensor, reshuffled every epoch;
- :class:`ShardSource`: shards on disk, shard order and rows reshuffled every epoch, one
  shard in memory;
- :class:`ActivationStore`: streams straight from the model through a shuffling buffer
  (SAELens-style: fill, shuffle, hand out half, refill), replayed from the start on resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from uncover.core.errors import UncoverError
from uncover.hooks.harvest import hook_values

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def _rows(model: HookedModel, hook: str, tokens: torch.Tensor, batch_size: int, skip_first: int,
          dtype: torch.dtype) -> Iterator[torch.Tensor]:
    for v in hook_values(model, tokens, hook, batch_size=batch_size):
        yield v[:, skip_first:].reshape(-1, v.shape[-1]).to(dtype)


def harvest(model: HookedModel, hook: str, tokens: torch.Tensor, batch_size: int = 8, skip_first: int = 1,
            out_dir: str | Path | None = None, shard_tokens: int = 65536,
            dtype: torch.dtype = torch.float32) -> torch.Tensor | Path:
    """Activations ``[n_tokens, d]`` at ``hook`` for token blocks ``[n_blocks, pos]``.

    ``skip_first``: drop the first positions of each block (the first token of a sequence
    carries attention-sink outliers that would dominate the reconstruction loss).
    With ``out_dir``, writes ``shard_00000.safetensors`` ... of ``shard_tokens`` rows each
    and returns the directory.

    >>> from uncover.data.corpus import token_blocks
    >>> blocks = token_blocks(model, block_len=64)[:2]
    >>> acts = harvest(model, "blocks.15.hook_resid_post", blocks)
    >>> acts.shape  # the first position of each block skipped
    torch.Size([126, 576])
    """
    from safetensors.torch import save_file

    if out_dir is None:
        return torch.cat(list(_rows(model, hook, tokens, batch_size, skip_first, dtype)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf: list[torch.Tensor] = []
    n, i = 0, 0

    def flush(rows: torch.Tensor) -> None:
        nonlocal i
        save_file({"acts": rows.contiguous()}, out / f"shard_{i:05d}.safetensors", metadata={"hook": hook})
        i += 1

    for rows in _rows(model, hook, tokens, batch_size, skip_first, dtype):
        buf.append(rows)
        n += len(rows)
        while n >= shard_tokens:
            allrows = torch.cat(buf)
            flush(allrows[:shard_tokens])
            buf, n = [allrows[shard_tokens:]], n - shard_tokens
    if n:
        flush(torch.cat(buf))
    return out


class TensorSource:
    """Batches ``[batch_size, d]`` from an in-memory tensor; a fresh permutation each epoch.

    >>> src = TensorSource(torch.arange(10.0)[:, None], batch_size=5, seed=0)
    >>> sorted(torch.cat([src.batch(0), src.batch(1)]).flatten().tolist()) == list(range(10))
    True
    """

    def __init__(self, acts: torch.Tensor, batch_size: int, seed: int = 0):
        if len(acts) < batch_size:
            raise UncoverError(f"{len(acts)} activations, fewer than one batch of {batch_size}")
        self.acts, self.batch_size, self.seed = acts, batch_size, seed
        self.steps_per_epoch = len(acts) // batch_size
        self._perm: tuple[int, torch.Tensor] | None = None

    @property
    def d(self) -> int:
        return self.acts.shape[-1]

    def batch(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.acts), generator=g))
        idx = self._perm[1][i * self.batch_size : (i + 1) * self.batch_size]
        return self.acts[idx].float()


class ShardSource:
    """Batches from safetensors shards written by :func:`harvest`; one shard in memory.

    >>> from uncover.data.corpus import token_blocks
    >>> out = harvest(model, "blocks.3.hook_resid_post", token_blocks(model, block_len=32)[:2], out_dir=tmp / "acts")
    >>> src = ShardSource(out, batch_size=16)
    """

    def __init__(self, path: str | Path, batch_size: int, seed: int = 0):
        from safetensors import safe_open

        self.files = sorted(Path(path).glob("shard_*.safetensors"))
        if not self.files:
            raise UncoverError(f"{path}: no shard_*.safetensors files (write them with harvest(out_dir=...))")
        self.sizes = []
        for f in self.files:
            with safe_open(str(f), "pt") as h:
                self.sizes.append(h.get_slice("acts").get_shape()[0])
        self.batch_size, self.seed = batch_size, seed
        self.per_shard = [s // batch_size for s in self.sizes]
        if not sum(self.per_shard):
            raise UncoverError(f"{path}: every shard is smaller than one batch of {batch_size}")
        self.steps_per_epoch = sum(self.per_shard)
        self._cur: tuple[int, int, torch.Tensor] | None = None

    @property
    def d(self) -> int:
        return int(self._load(0, 0).shape[-1])

    def _load(self, epoch: int, shard: int) -> torch.Tensor:
        from safetensors.torch import load_file

        if self._cur is None or self._cur[:2] != (epoch, shard):
            acts = load_file(self.files[shard])["acts"]
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + shard)
            self._cur = (epoch, shard, acts[torch.randperm(len(acts), generator=g)])
        return self._cur[2]

    def batch(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.files), generator=torch.Generator().manual_seed(self.seed + 31 * epoch))
        for shard in order.tolist():
            if i < self.per_shard[shard]:
                return self._load(epoch, shard)[i * self.batch_size : (i + 1) * self.batch_size].float()
            i -= self.per_shard[shard]
        raise AssertionError("unreachable")


class ActivationStore:
    """Streams activations from the model through a shuffling buffer of ``buffer_tokens`` rows.

    Batches must be asked for in order (``batch(0), batch(1), ...``); asking for a later
    step replays the stream up to it (what a resumed run does). The token blocks are
    cycled (each pass over them reshuffled by ``seed``).

    >>> from uncover.data.corpus import token_blocks
    >>> blocks = token_blocks(model, block_len=32)[:8]
    >>> store = ActivationStore(model, "blocks.15.hook_resid_post", blocks, 64, buffer_tokens=256)
    >>> store.batch(0).shape
    torch.Size([64, 576])
    """

    def __init__(self, model: HookedModel, hook: str, tokens: torch.Tensor, batch_size: int,
                 buffer_tokens: int = 65536, model_batch: int = 8, skip_first: int = 1, seed: int = 0):
        model.site(hook)
        if buffer_tokens < 2 * batch_size:
            raise UncoverError(f"buffer_tokens ({buffer_tokens}) must be at least 2 x batch_size ({batch_size})")
        self.model, self.hook, self.tokens = model, hook, tokens
        self.batch_size, self.buffer_tokens, self.model_batch = batch_size, buffer_tokens, model_batch
        self.skip_first, self.seed = skip_first, seed
        self._restart()

    def _restart(self) -> None:
        self._gen = torch.Generator().manual_seed(self.seed)
        self._stream = self._rows_forever()
        self._buffer = torch.zeros(0)
        self._out: list[torch.Tensor] = []
        self.step = 0

    def _rows_forever(self) -> Iterator[torch.Tensor]:
        while True:
            order = torch.randperm(len(self.tokens), generator=self._gen)
            yield from _rows(self.model, self.hook, self.tokens[order], self.model_batch, self.skip_first,
                             torch.float32)

    def _refill(self) -> None:
        parts = [self._buffer]
        n = len(self._buffer)
        while n < self.buffer_tokens:
            rows = next(self._stream)
            parts.append(rows)
            n += len(rows)
        buf = torch.cat(parts)
        buf = buf[torch.randperm(len(buf), generator=self._gen)]
        half = len(buf) // 2
        out, self._buffer = buf[:half], buf[half:]
        self._out = list(out[: len(out) // self.batch_size * self.batch_size].split(self.batch_size))

    @property
    def d(self) -> int:
        return self.model.cfg.d_model

    def batch(self, step: int) -> torch.Tensor:
        if step < self.step:
            self._restart()
        while True:
            if not self._out:
                self._refill()
            b = self._out.pop(0)
            self.step += 1
            if self.step - 1 == step:
                return b
