"""The engine options every dataset-scale operation shares, declared once.

Each config declares ``engine``, ``workers``, ``threads`` and ``ray_address`` with these field
makers (so the CLI, the workbench's forms and reruns show the same four options everywhere), and
its ``run`` opens the engine with :func:`open_engine`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from uncover.core.config import param
from uncover.scale.engines import LocalEngine, RayEngine, make_engine

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

EngineName = Literal["local", "ray"]
Engine = LocalEngine | RayEngine


def engine_param() -> Any:
    """The ``--engine local|ray`` field."""
    return param("local", help="Where shards run: this process (local) or Ray actors holding a model each (ray)")


def workers_param() -> Any:
    """The ``--workers`` field (Ray actors)."""
    return param(2, help="Ray engine: workers (actors), one model each", ge=1)


def threads_param() -> Any:
    """The ``--threads`` field (torch threads per Ray worker)."""
    return param(1, help="Ray engine: torch threads per worker", ge=1)


def ray_address_param() -> Any:
    """The ``--ray-address`` field (a running cluster)."""
    return param(
        None, help="Ray engine: a running cluster (ray://host:10001 or auto); default: start a local Ray", nonempty=True
    )


@contextmanager
def open_engine(model: HookedModel, cfg: Any, *, in_flight: int = 2) -> Iterator[Engine]:
    """The engine a config asks for (its ``engine``, ``workers``, ``threads``, ``ray_address``), closed after use
    (``in_flight``: items queued per Ray worker; 1 when each item takes minutes).

    >>> from types import SimpleNamespace
    >>> with open_engine(model, SimpleNamespace(engine="local", workers=2, threads=1, ray_address=None)) as eng:
    ...     eng.name
    'local'
    """
    eng = make_engine(
        cfg.engine, model, workers=cfg.workers, threads=cfg.threads, address=cfg.ray_address, in_flight=in_flight
    )
    try:
        yield eng
    finally:
        eng.close()
