"""The registry of operations, and the one way they run (:func:`execute`).

Technique packages declare their operations in an ``ops.py`` module with :func:`operation`;
:data:`CATALOG` lists those modules, imported on first use of the registry.
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uncover.core.config import Config
from uncover.core.errors import UncoverError, UsageError, did_you_mean
from uncover.core.progress import Progress
from uncover.core.results import Result

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

#: modules that declare operations (imported lazily, in this order)
CATALOG = (
    "uncover.lenses.ops",
    "uncover.attribution.ops",
    "uncover.patching.ops",
    "uncover.circuits.ops",
    "uncover.heads.ops",
    "uncover.neurons.ops",
    "uncover.sae.ops",
    "uncover.transcoders.ops",
    "uncover.graphs.ops",
    "uncover.probing.ops",
    "uncover.steering.ops",
    "uncover.editing.ops",
    "uncover.pruning.ops",
    "uncover.decoding.ops",
    "uncover.dynamics.ops",
    "uncover.scale.ops",
    "uncover.diffing.ops",
    "uncover.autointerp.ops",
    "uncover.saebench.ops",
)

_REGISTRY: dict[str, Operation] = {}
_LOADED = False

Runner = Callable[[Any, Any, Progress], Result]


@dataclass(frozen=True)
class Operation:
    """One technique, declared once.

    Attributes:
        name: the command name (``"lens"``; a space makes a group: ``"sae train"``).
        config: the :class:`Config` subclass of its inputs.
        run: ``run(model, config, progress) -> Result``: the technique itself.
        result: the result type ``run`` returns.
        help: one line for listings and ``--help``.
        needs_model: whether ``run`` takes a model (``False``: toy models trained from scratch).
        deterministic: whether a rerun must reproduce the result (within ``rtol``/``atol``).
        changes_weights: whether ``run`` leaves the model's weights changed (edits, pruning).
        long: minutes rather than seconds on a CPU (a background job in the workbench).
        example: config fields of a small, quick run on the embedded model (tests, docs, the workbench's
            first form); required fields must be in it.
    """

    name: str
    config: type[Config]
    run: Runner
    result: type[Result]
    help: str
    needs_model: bool = True
    deterministic: bool = True
    rtol: float = 1e-4
    atol: float = 1e-5
    changes_weights: bool = False
    long: bool = False
    example: dict[str, Any] | None = None

    def __call__(self, model: HookedModel | None = None, /, *, progress: bool | Progress = False,
                 seed: int | None = None, **fields: Any) -> Result:
        """Build the config from ``fields`` and :func:`execute` it; the result carries provenance."""
        from uncover.core.config import fields_of

        names = [f.name for f in fields_of(self.config)]
        for k in fields:
            if k not in names:
                msg = did_you_mean(k, names, "field")
                raise UsageError(f"operation {self.name!r}: {msg}"
                                 + (f" (its fields: {', '.join(names)})" if "did you mean" in msg else ""))
        return execute(self, self.config(**fields), model, progress=progress, seed=seed)

    def example_code(self) -> str:
        """The example as a doctest: ``model`` is the loaded model (omitted for model-free operations).

        The registry test runs it on the embedded model (and round-trips and reruns its result ``r``).

        >>> get_operation("lens").example_code().splitlines()[1]
        ">>> r = uc.run('lens', model, prompt='The Eiffel Tower is in the city of', targets=[' Paris'])"
        """
        args = ", ".join([repr(self.name), *(["model"] if self.needs_model else []),
                          *(f"{k}={v!r}" for k, v in (self.example or {}).items())])
        return (f">>> import uncover as uc\n>>> r = uc.run({args})\n"
                f">>> r.provenance.operation\n{self.name!r}\n")

    def describe(self) -> dict[str, Any]:
        """Name, help, flags and the config schema (what ``uncover list --json`` prints)."""
        return {"name": self.name, "help": self.help, "result": self.result.__name__,
                "needs_model": self.needs_model, "deterministic": self.deterministic,
                "changes_weights": self.changes_weights, "long": self.long, "example": self.example,
                "example_code": self.example_code(),
                "config": self.config.schema()}


def operation(name: str, config: type[Config], result: type[Result], **options: Any) -> Callable[[Runner], Runner]:
    """Register the decorated ``run(model, config, progress)`` as the operation ``name``.

    The help line is the first line of the function's docstring.
    """

    def register(fn: Runner) -> Runner:
        if name in _REGISTRY and _REGISTRY[name].run is not fn:
            raise ValueError(f"operation {name!r} is declared twice")
        help_ = (fn.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = Operation(name, config, fn, result, help_, **options)
        return fn

    return register


def _load() -> None:
    global _LOADED
    if not _LOADED:
        for mod in CATALOG:
            if importlib.util.find_spec(mod) is not None:
                importlib.import_module(mod)
        _LOADED = True


def operations() -> list[Operation]:
    """Every declared operation, by name.

    >>> import uncover
    >>> "lens" in [op.name for op in uncover.operations()]
    True
    """
    _load()
    return sorted(_REGISTRY.values(), key=lambda op: op.name)


def get_operation(name: str) -> Operation:
    """The operation called ``name``; an unknown name lists close valid ones.

    >>> get_operation("lens").config.__name__
    'LensConfig'
    """
    _load()
    if name not in _REGISTRY:
        raise UsageError(did_you_mean(name, sorted(_REGISTRY), "operation"))
    return _REGISTRY[name]


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def execute(op: Operation | str, config: Config, model: HookedModel | None = None, *,
            progress: bool | Progress = False, seed: int | None = None) -> Result:
    """Run ``op`` with ``config`` on ``model`` and stamp the result with its provenance.

    Model-dependent checks of the config run first, so a bad layer or hook name is refused
    before any work. ``seed`` seeds Python, NumPy and torch first (configs with their own
    ``seed`` field use that).

    >>> import uncover
    >>> r = uncover.execute("lens", uncover.get_operation("lens").config(prompt="The Eiffel Tower is in"), model)
    >>> r.provenance.operation
    'lens'
    """
    from uncover.hooks import weights
    from uncover.ops.provenance import record

    op = get_operation(op) if isinstance(op, str) else op
    if not isinstance(config, op.config):
        raise UsageError(f"operation {op.name!r} takes a {op.config.__name__}, not a {type(config).__name__}")
    if op.needs_model:
        from uncover.hooks.hooked import HookedModel

        if model is None:
            raise UsageError(f"operation {op.name!r} needs a model: pass one (uncover.load())")
        if not isinstance(model, HookedModel):
            raise UsageError(f"operation {op.name!r} needs a HookedModel (uncover.load(...)), got "
                             f"{type(model).__name__}; load it first: model = uncover.load({model!r:.60})")
        named = config.model_source()
        if named is not None and model.source != named:
            raise UsageError(f"operation {op.name!r}: the config names the base model {named!r}, but the model "
                             f"given was loaded from {model.source or 'the embedded default'!r}; load {named!r} "
                             "or leave the base out of the config")
        config.check_model(model)
    prog = progress if isinstance(progress, Progress) else Progress(enabled=bool(progress))
    if seed is None:
        seed = getattr(config, "seed", None)
    if seed is not None:
        from uncover.core.config import SEED_MAX

        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
            raise UsageError(f"seed must be an integer in 0..{SEED_MAX}, got {seed!r}")
        _seed(int(seed))
    started = time.time()
    t0 = time.perf_counter()
    result = op.run(model if op.needs_model else None, config, prog)
    seconds = time.perf_counter() - t0
    # a weight change is handed back with its provenance, or undone (a failure or Ctrl-C while stamping it)
    with weights.undone_on_error(getattr(result, "revert", None) if op.changes_weights else None):
        if not isinstance(result, op.result):
            raise UncoverError(f"operation {op.name!r} returned a {type(result).__name__}, "
                               f"not the declared {op.result.__name__}")
        result.provenance = record(op, config, model if op.needs_model else None, seed, started, seconds)
    return result


def run(name: str, model: HookedModel | None = None, /, *, progress: bool | Progress = False,
        seed: int | None = None, **fields: Any) -> Result:
    """Run the operation ``name`` with config ``fields``; the result carries its provenance.

    >>> import uncover as uc
    >>> r = uc.run("lens", model, prompt="The Eiffel Tower is in the city of", targets=[" Paris"])
    >>> r.provenance.config["targets"]
    [' Paris']
    """
    return get_operation(name)(model, progress=progress, seed=seed, **fields)
