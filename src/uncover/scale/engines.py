"""Engines: where the map of a dataset-scale job runs, in this process or on Ray.

An engine maps ``fn(model, item)`` over items and yields ``(index, result)`` as results come in.
``fn`` must be a module-level function (workers import it by name) and pure in the model's weights
and the item, so both engines give the same results.

- :class:`LocalEngine` (the default) calls ``fn`` in this process, in order, on the model in hand.
- :class:`RayEngine` starts (or joins, with ``address``) a Ray cluster and a pool of actors, each
  holding one model loaded by the same name or path and checked against the driver's weights
  fingerprint; each item is a Ray task on an actor. A worker that dies (killed, out of memory, its
  node lost) is replaced by a fresh actor and its unfinished items are submitted again, so a job
  completes with nothing lost; results are keyed by index, so nothing is counted twice. Ray does
  the scheduling, placement and transport: there is no home-made scheduler here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError, UsageError
from uncover.core.progress import Progress

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

ENGINES = ("local", "ray")
MapFn = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the driver's model: ``uncover.load(source, dtype=dtype)``, then checks its fingerprint.

    >>> spec = ModelSpec.of(model)
    >>> spec.source is None, spec.dtype
    (True, 'float32')
    """

    source: str | None
    dtype: str
    fingerprint: str
    name: str = ""

    @classmethod
    def of(cls, model: HookedModel) -> ModelSpec:
        """The spec of a model loaded by ``uncover.load`` (workers load it the same way)."""
        from uncover.core.fingerprint import weights_fingerprint
        from uncover.models.load import EMBEDDED_NAME

        if getattr(model, "source", None) is None and model.name != EMBEDDED_NAME:
            raise UsageError(
                f"model {model.name!r} was built in memory, so Ray workers cannot load it; save it "
                "(model.model.save_pretrained(DIR) and its tokenizer) and load it with uncover.load(DIR)"
            )
        return cls(
            getattr(model, "source", None),
            str(model.dtype).removeprefix("torch."),
            weights_fingerprint(model.model),
            model.name,
        )


class LocalEngine:
    """Runs the map in this process, in order, on ``model``.

    >>> from uncover.scale.engines import LocalEngine
    >>> list(LocalEngine(model).map(lambda m, x: x * 2, [1, 2]))
    [(0, 2), (1, 4)]
    """

    name = "local"

    def __init__(self, model: HookedModel):
        self.model = model

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threads": torch.get_num_threads()}

    def map(
        self,
        fn: MapFn,
        items: Iterable[Any],
        *,
        progress: Progress | None = None,
        total: int | None = None,
        desc: str = "",
    ) -> Iterator[tuple[int, Any]]:
        """``(index, fn(model, item))`` for each item, in order."""
        prog = progress if progress is not None else Progress.silent()
        results = ((i, fn(self.model, item)) for i, item in enumerate(items))
        yield from prog.bar(results, total=total, desc=desc)

    def close(self) -> None:
        pass


class _Worker:
    """A Ray actor's state: one model, loaded once (the actor class is built from this by :class:`RayEngine`)."""

    def __init__(self, spec: ModelSpec, threads: int):
        from uncover.core.fingerprint import weights_fingerprint
        from uncover.hooks.hooked import load

        torch.set_num_threads(threads)
        self.model = load(spec.source, dtype=spec.dtype)  # on the GPU Ray gave this actor, if any
        got = weights_fingerprint(self.model.model)
        if got != spec.fingerprint:
            raise UncoverError(
                f"worker loaded {spec.source or 'the embedded model'} with weights fingerprint {got}, "
                f"not the driver's {spec.fingerprint}: the weights on disk differ from the model in "
                "memory (edited?); save the model and harvest from the saved copy"
            )

    def pid(self) -> int:
        return os.getpid()

    def run(self, fn: MapFn, item: Any) -> Any:
        return fn(self.model, item)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("the ray engine needs Ray: pip install uncover[ray]") from None
    return ray


class RayEngine:
    """Runs the map as Ray tasks on ``workers`` actors, each holding one model.

    Args:
        spec: how workers load the model (:meth:`ModelSpec.of` the driver's model).
        workers: number of actors (each reserves ``threads`` CPUs).
        threads: torch threads per worker.
        address: a running cluster's address (``ray://host:10001`` or ``auto``); ``None`` starts a local Ray
            with ``workers * threads`` CPUs when none is running in this process.
        in_flight: items queued per worker (2 keeps each busy while the driver records results; 1 for items of
            minutes, so that no item waits behind another on one worker while a second worker idles at the end).
        gpus: GPUs per worker (Ray makes them visible to the actor; 0: the workers run on CPUs).

    >>> eng = RayEngine(ModelSpec.of(model), workers=2)  # doctest: +SKIP
    >>> sorted(eng.map(square, [1, 2, 3]))  # doctest: +SKIP
    [(0, 1), (1, 4), (2, 9)]
    """

    name = "ray"

    def __init__(
        self,
        spec: ModelSpec,
        workers: int = 2,
        threads: int = 1,
        address: str | None = None,
        in_flight: int = 2,
        gpus: float = 0.0,
    ):
        if workers < 1 or threads < 1 or in_flight < 1:
            raise UsageError(
                f"the ray engine needs workers, threads and in_flight >= 1, got {workers}, {threads}, {in_flight}"
            )
        self.spec, self.workers, self.threads, self.address, self.in_flight = spec, workers, threads, address, in_flight
        self.gpus = gpus
        self.actors: list[Any] = []
        self.pids: list[int] = []
        self.replaced = 0
        self._started_ray = False

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "workers": self.workers,
            "threads": self.threads,
            "gpus": self.gpus,
            "address": self.address,
            "replaced": self.replaced,
        }

    def _new_actor(self) -> Any:
        ray = _ray()
        cls = ray.remote(num_cpus=self.threads, num_gpus=self.gpus, max_restarts=0)(_Worker)
        return cls.remote(self.spec, self.threads)

    def start(self) -> None:
        """Join or start Ray and create the actors (each loads the model; waits until all have)."""
        ray = _ray()
        if not ray.is_initialized():
            if self.address is None:
                ray.init(num_cpus=self.workers * self.threads, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
            self._started_ray = True
        if not self.actors:
            self.actors = [self._new_actor() for _ in range(self.workers)]
            try:
                self.pids = self._get([a.pid.remote() for a in self.actors])
            except ray.exceptions.RayActorError as e:  # the worker's __init__ failed: say why, in one line
                self.close()
                why = str(e).strip().splitlines()
                raise UncoverError(f"a Ray worker could not start: {why[-1] if why else type(e).__name__}") from None

    def _get(self, refs: Any) -> Any:
        ray = _ray()
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            cause = e.as_instanceof_cause()
            raise (cause.cause if getattr(cause, "cause", None) is not None else cause) from None

    def _replace(self, slot: int) -> None:
        ray = _ray()
        try:
            ray.kill(self.actors[slot])
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.actors[slot] = self._new_actor()
        self.pids[slot] = self._get(self.actors[slot].pid.remote())
        self.replaced += 1

    def map(
        self,
        fn: MapFn,
        items: Iterable[Any],
        *,
        progress: Progress | None = None,
        total: int | None = None,
        desc: str = "",
    ) -> Iterator[tuple[int, Any]]:
        """``(index, fn(model, item))`` as tasks finish (any order); a dead worker's items are run again."""
        prog = progress if progress is not None else Progress.silent()
        yield from prog.bar(self._map(fn, items), total=total, desc=desc)

    def _map(self, fn: MapFn, items: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        ray = _ray()
        self.start()
        source = enumerate(items)
        pending: dict[Any, tuple[int, Any, int]] = {}  # ref -> (index, item, slot)
        retry: list[tuple[int, Any]] = []
        load = [0] * len(self.actors)

        def submit(slot: int) -> bool:
            nxt = retry.pop() if retry else next(source, None)
            if nxt is None:
                return False
            ref = self.actors[slot].run.remote(fn, nxt[1])
            pending[ref] = (nxt[0], nxt[1], slot)
            load[slot] += 1
            return True

        try:
            for _ in range(self.in_flight):  # round robin: with few items, every worker gets one before any gets two
                for slot in range(len(self.actors)):
                    submit(slot)
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                index, item, slot = pending.pop(ref)
                load[slot] -= 1
                try:
                    result = self._get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    # the worker died: replace it once, and run every item it held again
                    lost = [(i, it) for r, (i, it, s) in list(pending.items()) if s == slot]
                    for r in [r for r, (_, _, s) in pending.items() if s == slot]:
                        del pending[r]
                    retry.extend([*lost, (index, item)][::-1])
                    load[slot] = 0
                    self._replace(slot)
                    while load[slot] < self.in_flight and submit(slot):
                        pass
                    continue
                while load[slot] < self.in_flight and submit(slot):
                    pass
                yield index, result
        finally:
            for ref in pending:
                ray.cancel(ref, force=False)

    def close(self) -> None:
        """Stop the actors (and the local Ray this engine started)."""
        ray = _ray()
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors, self.pids = [], []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def make_engine(
    name: str, model: HookedModel, *, workers: int = 2, threads: int = 1, address: str | None = None, in_flight: int = 2
) -> LocalEngine | RayEngine:
    """The engine called ``name`` (``local`` or ``ray``) for ``model`` (``in_flight``: see :class:`RayEngine`).

    >>> make_engine("spark", model)
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: unknown engine 'spark'; valid: local, ray
    """
    if name == "local":
        if address is not None:
            raise UsageError("--ray-address needs --engine ray")
        return LocalEngine(model)
    if name == "ray":
        _ray()
        return RayEngine(ModelSpec.of(model), workers=workers, threads=threads, address=address, in_flight=in_flight)
    raise UsageError(f"unknown engine {name!r}; valid: {', '.join(ENGINES)}")
