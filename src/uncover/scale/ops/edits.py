"""Edit evaluations over many facts as a sweep, and the ``edit-sweep`` operation.

:func:`edit_sweep` maps :class:`EditPart` (evaluate, edit, evaluate and revert each fact of a shard,
with :func:`uncover.editing.evaluate.evaluate_edits`) over shards of facts and concatenates the
rows (:func:`concat_evals`): the result is the single-process evaluation of all the facts.
:func:`generated_counterfacts` makes a few hundred counterfactuals from the built-in facts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from uncover.core.config import SEED_MAX, Config, param
from uncover.core.errors import UsageError
from uncover.editing.evaluate import EditEval
from uncover.editing.rome import RomeConfig
from uncover.ops.registry import operation
from uncover.scale.ops.engine import Engine, engine_param, open_engine, ray_address_param, threads_param, workers_param
from uncover.scale.sweep import SweepRun, sweep

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.data.counterfact import Counterfact
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class RomeEdit:
    """``edit_fn(model, fact)`` for :func:`uncover.editing.evaluate.evaluate_edits`: ROME's edit of one fact."""

    layer: int | None = None
    mom2_samples: int = 20_000
    cache: str | None = None
    config: Any = None

    def __call__(self, model: HookedModel, fact: Counterfact) -> Any:
        from uncover.editing.rome import rome

        return rome(
            model,
            fact.prompt,
            fact.subject,
            fact.new,
            layer=self.layer,
            mom2_samples=self.mom2_samples,
            cache=self.cache,
            config=self.config,
            progress=False,
        )


@dataclass(frozen=True)
class EditPart:
    """The map of an edit sweep: evaluate, edit, evaluate and revert each fact of a shard."""

    edit: Any
    method: str = "rome"
    gen_tokens: int = 0

    def __call__(self, model: HookedModel, facts: list[Counterfact]) -> EditEval:
        from uncover.editing.evaluate import evaluate_edits

        return evaluate_edits(model, self.edit, facts, method=self.method, gen_tokens=self.gen_tokens, progress=False)


def concat_evals(parts: list[EditEval]) -> EditEval:
    """One :class:`~uncover.editing.evaluate.EditEval` of all shards' rows, in order.

    >>> a = EditEval("rome", [{"subject": "A", "new": " x"}], {}, 1.0, [0.5])
    >>> b = EditEval("rome", [{"subject": "B", "new": " y"}], {}, 2.0, [0.7])
    >>> ev = concat_evals([a, b]); ev.n_facts, ev.seconds, ev.edit_seconds
    (2, 3.0, [0.5, 0.7])
    """
    first = parts[0]
    return EditEval(
        first.method,
        [r for p in parts for r in p.rows],
        dict(first.options),
        sum(p.seconds for p in parts),
        [s for p in parts for s in p.edit_seconds],
    )


def edit_sweep(
    engine: Engine,
    facts: list[Counterfact],
    edit: Any = None,
    *,
    method: str = "rome",
    gen_tokens: int = 0,
    shard_size: int = 8,
    progress: Any = False,
) -> SweepRun:
    """An edit evaluation over many facts (``value``: the :class:`EditEval` of all of them).

    ``edit``: ``edit_fn(model, fact)`` (default :class:`RomeEdit`), a module-level callable for Ray.

    >>> run = edit_sweep(LocalEngine(model), generated_counterfacts(4), shard_size=2)  # doctest: +SKIP
    >>> run.value.scores()["efficacy"]  # doctest: +SKIP
    1.0
    """
    return sweep(
        engine,
        EditPart(edit or RomeEdit(), method, gen_tokens),
        list(facts),
        concat_evals,
        shard_size=shard_size,
        progress=progress,
        desc=f"{method} sweep",
    )


#: relation templates whose objects are interchangeable (a city for a city, a country for a country)
_OBJECT_KINDS = {
    "{} is in the city of": "city",
    "The capital city of {} is": "city",
    "{} is located in the country of": "country",
    "{} are located in the country of": "country",
    "{} is a car company from the country of": "country",
    "The official language of {} is": "language",
}


def generated_counterfacts(n: int | None = None, *, seed: int = 0) -> list[Counterfact]:
    """Counterfactuals generated from the built-in facts: each fact with every other object of its kind as the
    new object (cities for cities, countries for countries, languages for languages); ``n`` of them, drawn
    by a seeded shuffle (default all).

    >>> facts = generated_counterfacts()
    >>> len(facts), len({(f.subject, f.new) for f in facts}) == len(facts)
    (191, True)
    """
    from dataclasses import replace

    from uncover.data.counterfact import counterfacts

    base = counterfacts()
    pools: dict[str, list[str]] = {}
    for f in base:
        kind = _OBJECT_KINDS.get(f.prompt, f.prompt)
        if f.true not in pools.setdefault(kind, []):
            pools[kind].append(f.true)
    out = [replace(f, new=o) for f in base for o in pools[_OBJECT_KINDS.get(f.prompt, f.prompt)] if o != f.true]
    if n is None:
        return out
    if not 1 <= n <= len(out):
        raise UsageError(f"n must be in [1, {len(out)}] (the generated counterfactuals), got {n}")
    random.Random(seed).shuffle(out)
    return out[:n]


@dataclass(frozen=True)
class EditSweepConfig(Config):
    """ROME over many generated counterfactuals, as a sweep over shards of facts."""

    facts: int = param(8, help="Generated counterfactuals to edit and evaluate", ge=1)
    shard_size: int = param(4, help="Facts per shard (one task each)", ge=1)
    layer: int | None = param(None, help="Edited layer (default: ROME's choice)", unit="layer")
    mom2_samples: int = param(20_000, help="Corpus tokens for ROME's key statistics", ge=64)
    steps: int = param(25, help="ROME's optimisation steps for each new value", ge=1)
    engine: Literal["local", "ray"] = engine_param()
    workers: int = workers_param()
    threads: int = threads_param()
    ray_address: str | None = ray_address_param()
    seed: int = param(0, help="Which generated counterfactuals (a seeded draw)", ge=0, le=SEED_MAX)


@operation(
    "edit-sweep",
    EditSweepConfig,
    EditEval,
    long=True,
    rtol=1e-3,
    atol=1e-4,
    example={"facts": 1, "shard_size": 1, "layer": 4, "mom2_samples": 2000, "steps": 5},
)
def edit_sweep_op(model: HookedModel, cfg: EditSweepConfig, progress: Progress) -> EditEval:
    """ROME over many generated counterfactuals (efficacy, paraphrase, neighbourhood), sharded."""
    with open_engine(model, cfg, in_flight=1) as eng:  # a shard of edits takes minutes: queue none
        run = edit_sweep(
            eng,
            generated_counterfacts(cfg.facts, seed=cfg.seed),
            RomeEdit(cfg.layer, cfg.mom2_samples, config=RomeConfig(steps=cfg.steps)),
            shard_size=cfg.shard_size,
            progress=progress,
        )
    ev = run.value
    ev.options = {**ev.options, "engine": run.engine, "shard_seconds": [round(s, 4) for s in run.seconds]}
    return ev
