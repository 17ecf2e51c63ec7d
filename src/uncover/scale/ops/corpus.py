"""Sweeps over a corpus's token blocks: pruning's perplexity and top-activating contexts (``contexts-sweep``).

- :func:`perplexity_sweep`: summed NLL and token count per shard; the reduce is ``exp(total / count)``.
- :func:`contexts_sweep`: each shard streams its blocks through a
  :class:`~uncover.hooks.streaming.StreamingTopK` (the single-process function,
  :func:`uncover.neurons.top_activations`, streams all blocks through one); the reduce keeps the ``k``
  largest of the shards' top-``k`` per unit (ties: the earlier position first), sums the firing counts
  and totals, and keeps the ``sample`` smallest of the shards' random keys (each shard draws its keys
  from a generator seeded by its first block, so both engines draw the same sample). With shards of
  whole batches (``shard_blocks`` a multiple of ``batch_size``) every activation is computed in the
  same batch as in one process, so the top values, positions and windows are the single-process ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from uncover.core.config import Config, param
from uncover.core.errors import UncoverError, UsageError
from uncover.hooks.contexts import TopActivations
from uncover.hooks.streaming import StreamingTopK
from uncover.ops.registry import operation
from uncover.scale.ops.engine import Engine, engine_param, open_engine, ray_address_param, threads_param, workers_param
from uncover.scale.sweep import SweepRun, sweep

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel


# ---- perplexity over token blocks ------------------------------------------------------------------
def perplexity_part(model: HookedModel, blocks: list[torch.Tensor]) -> tuple[float, int]:
    """``(summed next-token NLL, predicted tokens)`` of token blocks, from pruning's :func:`perplexity`."""
    from uncover.pruning.evaluate import perplexity

    b = torch.stack(blocks)
    n = b.shape[0] * (b.shape[1] - 1)
    return math.log(perplexity(model, b)) * n, n


def perplexity_reduce(parts: list[tuple[float, int]]) -> float:
    """``exp(total NLL / total tokens)``.

    >>> round(perplexity_reduce([(math.log(2.0) * 3, 3), (math.log(8.0) * 1, 1)]), 6)  # 2 ** ((3 + 3) / 4)
    2.828427
    """
    return math.exp(sum(p[0] for p in parts) / sum(p[1] for p in parts))


def perplexity_sweep(engine: Engine, tokens: torch.Tensor, *, shard_size: int = 8, progress: Any = False) -> SweepRun:
    """Perplexity of ``tokens`` ``[n, seq]`` as a map over shards of blocks (``value``: the perplexity).

    >>> from uncover.pruning.evaluate import heldout_tokens, perplexity
    >>> from uncover.scale.engines import LocalEngine
    >>> blocks = heldout_tokens(model, 4, 32)
    >>> run = perplexity_sweep(LocalEngine(model), blocks, shard_size=3)
    >>> abs(run.value - perplexity(model, blocks)) < 1e-6 * run.value
    True
    """
    return sweep(
        engine,
        perplexity_part,
        list(tokens),
        perplexity_reduce,
        shard_size=shard_size,
        progress=progress,
        desc="perplexity",
    )


# ---- top-activating contexts over a corpus ---------------------------------------------------------
@dataclass(frozen=True)
class ContextsPart:
    """The map of :func:`contexts_sweep`: one shard of ``(row, block [pos])`` items -> its running top-k state."""

    hook: str
    units: tuple[int, ...] | None = None
    k: int = 10
    window: tuple[int, int] = (12, 4)
    batch_size: int = 8
    sample: int = 1024
    seed: int = 0

    def __call__(self, model: HookedModel, shard: list[tuple[int, torch.Tensor]]) -> StreamingTopK:
        from uncover.hooks.harvest import hook_values

        start, blocks = shard[0][0], torch.stack([b for _, b in shard])
        stream = None
        for acts in hook_values(model, blocks, self.hook, batch_size=self.batch_size):  # [batch, pos, features]
            if self.units is not None:
                bad = [u for u in self.units if not 0 <= u < acts.shape[-1]]
                if bad:
                    raise UncoverError(
                        f"unit(s) {bad} out of range; {self.hook} has {acts.shape[-1]} (0..{acts.shape[-1] - 1})"
                    )
                acts = acts[..., list(self.units)]
            if stream is None:
                stream = StreamingTopK(self.k, acts.shape[-1], self.window, self.sample, self.seed * 1_000_003 + start)
            stream.update(acts)
        assert stream is not None
        stream.index += start * blocks.shape[1]  # positions numbered over the whole corpus
        return stream


def merge_topk(parts: list[StreamingTopK]) -> StreamingTopK:
    """One :class:`StreamingTopK` of all shards: the ``k`` largest per unit (the earlier position first among
    equal values), summed counts, and the ``sample`` smallest random keys.

    >>> a, b = StreamingTopK(2, 1), StreamingTopK(2, 1)
    >>> a.update(torch.tensor([[[1.0], [5.0], [3.0]]]))
    >>> b.update(torch.tensor([[[4.0], [0.0], [2.0]]])); b.index += 3
    >>> m = merge_topk([a, b])
    >>> m.values[:, 0].tolist(), m.index[:, 0].tolist(), m.count
    ([5.0, 4.0], [1, 3], 6)
    """
    first = parts[0]
    out = StreamingTopK(first.k, first.values.shape[1], first.window, first.sample_size)
    values = torch.cat([p.values for p in parts])  # [shards * k, units]
    index = torch.cat([p.index for p in parts])
    by_pos = index.argsort(dim=0, stable=True)
    order = by_pos.gather(0, values.gather(0, by_pos).argsort(dim=0, descending=True, stable=True))[: first.k]
    out.values, out.index = values.gather(0, order), index.gather(0, order)
    windows = torch.cat([p.windows for p in parts])
    out.windows = windows.gather(0, order[..., None].expand(-1, -1, windows.shape[-1]))
    out.rows, out.count = sum(p.rows for p in parts), sum(p.count for p in parts)
    out.positive = torch.stack([p.positive for p in parts]).sum(0)
    out.total = torch.stack([p.total for p in parts]).sum(0)
    if first.sample_size:
        keys = torch.cat([p._keys for p in parts])
        keep = keys.topk(min(first.sample_size, len(keys)), largest=False).indices
        out.sample, out._keys = torch.cat([p.sample for p in parts])[keep], keys[keep]
    return out


def unit_labels(hook: str, units: list[int]) -> list[str]:
    """Labels as :func:`uncover.neurons.top_activations` writes them (``L3N5`` for MLP neurons, else ``u5``).

    >>> unit_labels("blocks.3.mlp.hook_post", [5]), unit_labels("blocks.3.hook_resid_post", [5])
    (['L3N5'], ['u5'])
    """
    from uncover.core.names import HookName, neuron_label

    name = HookName.parse(hook)
    return [neuron_label(name.layer, u) if name.point == "mlp.hook_post" else f"u{u}" for u in units]


def contexts_sweep(
    engine: Engine,
    model: HookedModel,
    hook: str,
    tokens: torch.Tensor,
    units: list[int] | None = None,
    *,
    k: int = 10,
    window: tuple[int, int] = (12, 4),
    batch_size: int = 8,
    shard_blocks: int = 64,
    sample: int = 1024,
    seed: int = 0,
    progress: Any = False,
) -> SweepRun:
    """Top-activating contexts of ``units`` at ``hook`` over ``tokens`` ``[n_blocks, pos]``, as a map over shards
    of ``shard_blocks`` blocks (``value``: a :class:`TopActivations`). ``model`` names the tokens (the driver's).

    >>> from uncover.neurons import top_activations
    >>> from uncover.scale.engines import LocalEngine
    >>> from uncover.data.corpus import token_blocks
    >>> blocks = token_blocks(model, None, block_len=32)[:16]
    >>> run = contexts_sweep(LocalEngine(model), model, "blocks.3.mlp.hook_post", blocks, [5, 7], k=4,
    ...                      shard_blocks=8)
    >>> ref = top_activations(model, 3, [5, 7], tokens=blocks, k=4, block_len=32, window=(12, 4))
    >>> torch.equal(run.value.values, ref.values), torch.equal(run.value.pos, ref.pos)
    (True, True)
    """
    hook = model.select_names([hook])[0]
    if k < 1 or shard_blocks < 1 or batch_size < 1:
        raise UsageError(f"k, shard_blocks and batch_size must be >= 1, got {k}, {shard_blocks}, {batch_size}")
    part = ContextsPart(hook, None if units is None else tuple(units), k, tuple(window), batch_size, sample, seed)
    run = sweep(
        engine, part, list(enumerate(tokens)), merge_topk, shard_size=shard_blocks, progress=progress, desc="contexts"
    )
    stream = run.value
    labels = unit_labels(hook, list(units) if units is not None else list(range(stream.values.shape[1])))
    run.value = TopActivations.from_stream(model, stream, hook, labels, tokens)
    return run


def corpus_blocks(model: HookedModel, cfg: Any) -> torch.Tensor:
    """The token blocks ``[n, block_len]`` a corpus sweep's config names (its ``corpus``, ``field``, ``tokens`` and
    ``block_len``), refusing a corpus shorter than one block."""
    from uncover.scale.corpora import Corpus, token_blocks

    max_blocks = None if cfg.tokens is None else cfg.tokens // cfg.block_len
    blocks = list(token_blocks(model, Corpus.open(cfg.corpus, cfg.field), cfg.block_len, max_blocks))
    if not blocks:
        raise UsageError(
            f"the corpus holds fewer tokens than one block of {cfg.block_len}; use a smaller --block-len or more text"
        )
    return torch.stack(blocks)


@dataclass(frozen=True)
class ContextsSweepConfig(Config):
    """Top-activating contexts of units at a hook over a whole corpus, as a sweep over shards of token blocks."""

    hook: str = param("blocks.10.mlp.hook_post", help="Hook name (blocks.L.mlp.hook_post: MLP neurons)", unit="hook")
    units: list[int] | None = param(None, help="Unit indices at the hook, comma-separated (default: all)",
                                    ge=0, min_items=1)
    k: int = param(10, help="Contexts kept per unit", ge=1)
    corpus: Path | None = param(
        None,
        help="Corpus: .txt/.md, .jsonl, .parquet, or a folder saved by datasets' "
        "save_to_disk (default: the embedded corpus)",
        path="in_any",
    )
    field: str = param("text", help="JSON field, Parquet or dataset column holding the text", nonempty=True)
    tokens: int | None = param(None, help="Corpus tokens to read (default: the whole corpus)", ge=1)
    block_len: int = param(64, help="Tokens per block (context length)", ge=2)
    batch_size: int = param(8, help="Blocks per forward pass", ge=1)
    shard_blocks: int = param(64, help="Blocks per shard (one task each; a multiple of --batch-size)", ge=1)
    engine: Literal["local", "ray"] = engine_param()
    workers: int = workers_param()
    threads: int = threads_param()
    ray_address: str | None = ray_address_param()

    def validate(self) -> None:
        super().validate()
        if self.shard_blocks % self.batch_size:
            raise UsageError(
                f"ContextsSweepConfig: shard_blocks (--shard-blocks) must be a multiple of batch_size "
                f"(--batch-size) {self.batch_size}, so that shards hold whole batches; got "
                f"{self.shard_blocks}"
            )
        if self.tokens is not None and self.tokens < self.block_len:
            raise UsageError(
                f"ContextsSweepConfig: tokens (--tokens) must be at least one block of {self.block_len}, "
                f"got {self.tokens}"
            )

    def check_model(self, model: HookedModel) -> None:
        """A hook with a value per position, the unit indices against its width (one forward pass of two tokens,
        stopped at the hook), and the memory of one batch of values and of the top-k state."""
        super().check_model(model)
        from uncover.scale.ops.checks import check_shard_memory, hook_widths

        d = hook_widths(model, [self.hook], "ContextsSweepConfig", "hook (--hook)")[model.select_names([self.hook])[0]]
        units = len(self.units) if self.units else d
        check_shard_memory(4 * self.batch_size * self.block_len * d + 12 * self.k * units,
                           f"ContextsSweepConfig: batches of {self.batch_size} blocks x {self.block_len} positions at "
                           f"{d} values per position ({self.hook}) and the top {self.k} contexts of {units} unit(s)",
                           "lower --batch-size, --block-len or --k, or give --units")
        if self.units:
            bad = [u for u in self.units if u >= d]
            if bad:
                raise UsageError(
                    f"ContextsSweepConfig: units (--units) {bad} out of range; {self.hook} has {d} features "
                    f"(0..{d - 1})"
                )


@operation(
    "contexts-sweep",
    ContextsSweepConfig,
    TopActivations,
    long=True,
    example={
        "hook": "blocks.10.mlp.hook_post",
        "units": [5, 7],
        "k": 4,
        "tokens": 1024,
        "block_len": 64,
        "shard_blocks": 8,
    },
)
def contexts_sweep_op(model: HookedModel, cfg: ContextsSweepConfig, progress: Progress) -> TopActivations:
    """Top-activating contexts over a corpus, sharded (the same contexts as ``neurons`` over the same blocks)."""
    blocks = corpus_blocks(model, cfg)
    with open_engine(model, cfg) as eng:
        run = contexts_sweep(
            eng,
            model,
            cfg.hook,
            blocks,
            cfg.units,
            k=cfg.k,
            batch_size=cfg.batch_size,
            shard_blocks=cfg.shard_blocks,
            progress=progress,
        )
    return run.value
