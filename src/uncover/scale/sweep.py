"""Sweeps: an evaluation over many items as a map over shards of items plus a reduce.

``sweep(engine, part, items, reduce, shard_size)`` cuts ``items`` into consecutive shards, runs
``part(model, shard)`` for each on the engine (in this process, or as Ray tasks on actors that
each hold a model), and hands the partial results, in shard order, to ``reduce``. ``part`` must
be a module-level function (Ray workers import it by name) that leaves the model as it found it
(an edit is reverted before it returns). With a ``reduce`` that combines partials exactly as the
single-process evaluation combines items, the result is the single-process result, whatever the
shard size or engine. The technique-specific parts and reduces live with the operations
(:mod:`uncover.scale.ops`): this layer knows no technique.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from uncover.core.errors import UsageError
from uncover.core.progress import Progress

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class SweepRun:
    """What a sweep returns: the reduced value and how the shards went.

    Attributes:
        value: ``reduce(partials)``.
        partials: each shard's partial result, in shard order.
        seconds: wall time per shard (as measured around ``part`` on the worker).
        total_seconds: wall time of the whole sweep.
        engine: the engine's description.
    """

    value: Any
    partials: list[Any]
    seconds: list[float]
    total_seconds: float
    engine: dict[str, Any]


@dataclass(frozen=True)
class _Timed:
    part: Callable[[Any, Any], Any]

    def __call__(self, model: Any, shard: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        out = self.part(model, shard)
        return out, time.perf_counter() - t0


def shards_of(items: Sequence[T], shard_size: int) -> list[list[T]]:
    """Consecutive shards of ``shard_size`` items (the last may be shorter).

    >>> shards_of([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    """
    if shard_size < 1:
        raise UsageError(f"shard_size must be >= 1, got {shard_size}")
    items = list(items)
    return [items[i : i + shard_size] for i in range(0, len(items), shard_size)]


def sweep(
    engine: Any,
    part: Callable[[Any, list[T]], R],
    items: Sequence[T],
    reduce: Callable[[list[R]], Any],
    *,
    shard_size: int = 16,
    progress: bool | Progress = False,
    desc: str = "sweep",
) -> SweepRun:
    """Map ``part`` over shards of ``items`` on ``engine`` and ``reduce`` the partials (in shard order).

    >>> from uncover.scale.engines import LocalEngine
    >>> run = sweep(LocalEngine(model), lambda m, xs: sum(xs), list(range(10)), sum, shard_size=4)
    >>> run.value, run.partials
    (45, [6, 22, 17])
    """
    if not items:
        raise UsageError("nothing to sweep over: no items")
    prog = progress if isinstance(progress, Progress) else Progress(enabled=bool(progress))
    shards = shards_of(items, shard_size)
    t0 = time.perf_counter()
    got: dict[int, tuple[Any, float]] = {}
    for index, out in engine.map(_Timed(part), shards, progress=prog, total=len(shards), desc=desc):
        got[index] = out
    partials = [got[i][0] for i in range(len(shards))]
    return SweepRun(
        reduce(partials), partials, [got[i][1] for i in range(len(shards))], time.perf_counter() - t0, engine.describe()
    )
