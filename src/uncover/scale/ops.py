"""Dataset-scale operations: ``harvest`` (activation shards with a manifest) and sweeps over many items.

The sweeps are maps over shards of items plus a reduce (:func:`uncover.scale.sweep.sweep`), each
reducing to exactly what the single-process evaluation computes:

- :func:`perplexity_sweep`: pruning's perplexity over a corpus's token blocks (summed NLL and count per shard);
- :func:`patching_sweep`: activation patching over many prompt pairs (one grid per pair, stacked);
- :func:`edit_sweep`: an edit evaluation (ROME by default) over many facts, e.g. :func:`generated_counterfacts`.

Every part is a module-level function, so Ray workers import it by name.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from uncover.core.config import Config, param
from uncover.core.errors import UsageError
from uncover.core.results import Result
from uncover.editing.evaluate import EditEval
from uncover.editing.rome import RomeConfig
from uncover.ops.registry import operation
from uncover.scale.engines import LocalEngine, RayEngine, make_engine
from uncover.scale.harvest import harvest_corpus
from uncover.scale.sweep import SweepRun, sweep

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.core.progress import Progress
    from uncover.data.counterfact import Counterfact
    from uncover.data.tasks import PromptPair
    from uncover.hooks.hooked import HookedModel

Engine = LocalEngine | RayEngine


def _split(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


# ---- harvest --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HarvestConfig(Config):
    """Harvest activations at hooks over a corpus into safetensors shards with a manifest."""

    hooks: list[str] = param(help="Hook names, comma-separated (blocks.6.hook_resid_post,blocks.6.hook_mlp_out)",
                             unit="hook", min_items=1, parse=_split)
    out: Path = param(help="Folder for the shards and manifest.json (an unfinished one resumes)", path="out_dir")
    corpus: Path | None = param(None, help="Corpus: .txt/.md (paragraphs), .jsonl, .parquet, or a folder saved by "
                                           "datasets' save_to_disk (default: the embedded corpus)", path="in_any")
    field: str = param("text", help="JSON field, Parquet or dataset column holding the text", nonempty=True)
    tokens: int | None = param(None, help="Corpus tokens to read (default: the whole corpus)", ge=1)
    block_len: int = param(128, help="Tokens per block (context length)", ge=2)
    shard_blocks: int = param(64, help="Blocks per shard", ge=1)
    batch_size: int = param(8, help="Blocks per forward pass", ge=1)
    skip_first: int = param(1, help="Leading positions of each block not kept (attention sinks)", ge=0)
    store_dtype: Literal["float32", "float16", "bfloat16"] = param("float32", help="Stored dtype of the values")
    engine: Literal["local", "ray"] = param("local", help="Where shards are computed: this process or Ray actors")
    workers: int = param(2, help="Ray engine: workers (actors), one model each", ge=1)
    threads: int = param(1, help="Ray engine: torch threads per worker", ge=1)
    ray_address: str | None = param(None, help="Ray engine: a running cluster (ray://host:10001 or auto); "
                                               "default: start a local Ray", nonempty=True)
    overwrite: bool = param(False, help="Delete what the folder holds first instead of resuming")


@dataclass
class HarvestResult(Result):
    """A finished harvest: where its shards are, its manifest, and what this run computed.

    Attributes:
        out: the shard folder.
        manifest: ``manifest.json`` as written (model, corpus, hooks, dtype, positions, settings, shards).
        computed: shards this run computed.
        skipped: shards already done (a resumed job).
        seconds: wall time of this run.
        tokens_per_second: corpus tokens harvested per second in this run.
    """

    out: str
    manifest: dict
    computed: list[int]
    skipped: list[int]
    seconds: float
    tokens_per_second: float

    @property
    def title(self) -> str:
        return f"Harvest of {', '.join(self.manifest['hooks'])}"

    def summary(self) -> str:
        t = self.manifest["totals"]
        return (f"{t['shards']} shard(s), {t['tokens']} tokens, {t['rows']} rows per hook in {self.out} "
                f"({len(self.computed)} computed, {len(self.skipped)} already done; "
                f"{self.tokens_per_second:,.0f} tokens/s on the {self.manifest['engine'].get('name')} engine)")

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        cols = ["index", "file", "status", "blocks", "tokens", "rows", "seconds", "worker"]
        return pd.DataFrame([{c: s.get(c) for c in cols} for s in self.manifest["shards"]], columns=cols)

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure(go.Bar(x=df["index"], y=df["seconds"], hovertext=df["worker"]))
        fig.update_layout(title=self.title, xaxis_title="shard", yaxis_title="seconds", height=320)
        return fig


@operation("harvest", HarvestConfig, HarvestResult, deterministic=False, long=True,
           example={"hooks": ["blocks.3.hook_resid_post"], "out": "shards", "tokens": 256, "block_len": 32,
                    "shard_blocks": 4})
def harvest(model: HookedModel, cfg: HarvestConfig, progress: Progress) -> HarvestResult:
    """Harvest activations at hooks over a corpus into shards with a manifest (local or Ray engine)."""
    from uncover.scale.corpora import Corpus

    manifest, run = harvest_corpus(
        model, cfg.hooks, Corpus.open(cfg.corpus, cfg.field), cfg.out, tokens=cfg.tokens, block_len=cfg.block_len,
        shard_blocks=cfg.shard_blocks, batch_size=cfg.batch_size, skip_first=cfg.skip_first, dtype=cfg.store_dtype,
        engine=cfg.engine, workers=cfg.workers, threads=cfg.threads, ray_address=cfg.ray_address,
        overwrite=cfg.overwrite, progress=progress)
    progress.message(f"wrote {cfg.out.resolve() / 'manifest.json'}")
    return HarvestResult(str(cfg.out.resolve()), manifest.to_dict(), run["computed"], run["skipped"],
                         round(run["seconds"], 4), round(run["tokens_per_second"], 2))


# ---- sweeps: parts and reduces ----------------------------------------------------------------------
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
    >>> blocks = heldout_tokens(model, 4, 32)
    >>> run = perplexity_sweep(LocalEngine(model), blocks, shard_size=3)
    >>> abs(run.value - perplexity(model, blocks)) < 1e-6 * run.value
    True
    """
    return sweep(engine, perplexity_part, list(tokens), perplexity_reduce, shard_size=shard_size, progress=progress,
                 desc="perplexity")


@dataclass(frozen=True)
class PatchSettings:
    """Activation patching's settings for every pair (see :func:`uncover.patching.activation_patching`)."""

    hook: str = "z"
    per: str = "head"
    metric: str = "logit_diff"
    direction: str = "denoise"

    def __call__(self, model: HookedModel, pairs: list[PromptPair]) -> list[torch.Tensor]:
        from uncover.patching.activation import activation_patching

        return [activation_patching(model, p.clean, p.corrupt, p.answer, p.wrong, hook=self.hook, per=self.per,
                                    metric=self.metric, direction=self.direction).grid for p in pairs]


def stack_grids(parts: list[list[torch.Tensor]]) -> torch.Tensor:
    """Every pair's grid, stacked ``[pairs, ...]`` (grids per position need pairs of one length).

    >>> stack_grids([[torch.zeros(2, 3)], [torch.ones(2, 3), torch.ones(2, 3)]]).shape
    torch.Size([3, 2, 3])
    """
    grids = [g for p in parts for g in p]
    if len({tuple(g.shape) for g in grids}) > 1:
        raise UsageError("the pairs' grids have different shapes (prompts of different lengths); patch per head "
                         "(hook z, per head) or give pairs of one length")
    return torch.stack(grids)


def patching_sweep(engine: Engine, pairs: list[PromptPair], settings: PatchSettings | None = None, *,
                   shard_size: int = 4, progress: Any = False) -> SweepRun:
    """Activation patching over many prompt pairs (``value``: ``[pairs, ...]`` grids; mean over axis 0).

    >>> from uncover.data.tasks import ioi
    >>> run = patching_sweep(LocalEngine(model), ioi(n=2).pairs[:2], shard_size=1)  # doctest: +SKIP
    >>> run.value.shape  # doctest: +SKIP
    torch.Size([2, 30, 9])
    """
    return sweep(engine, settings or PatchSettings(), list(pairs), stack_grids, shard_size=shard_size,
                 progress=progress, desc="patching")


@dataclass(frozen=True)
class RomeEdit:
    """``edit_fn(model, fact)`` for :func:`uncover.editing.evaluate.evaluate_edits`: ROME's edit of one fact."""

    layer: int | None = None
    mom2_samples: int = 20_000
    cache: str | None = None
    config: Any = None

    def __call__(self, model: HookedModel, fact: Counterfact) -> Any:
        from uncover.editing.rome import rome

        return rome(model, fact.prompt, fact.subject, fact.new, layer=self.layer, mom2_samples=self.mom2_samples,
                    cache=self.cache, config=self.config, progress=False)


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
    return EditEval(first.method, [r for p in parts for r in p.rows], dict(first.options),
                    sum(p.seconds for p in parts), [s for p in parts for s in p.edit_seconds])


def edit_sweep(engine: Engine, facts: list[Counterfact], edit: Any = None, *, method: str = "rome",
               gen_tokens: int = 0, shard_size: int = 8, progress: Any = False) -> SweepRun:
    """An edit evaluation over many facts (``value``: the :class:`EditEval` of all of them).

    ``edit``: ``edit_fn(model, fact)`` (default :class:`RomeEdit`), a module-level callable for Ray.

    >>> run = edit_sweep(LocalEngine(model), generated_counterfacts(4), shard_size=2)  # doctest: +SKIP
    >>> run.value.scores()["efficacy"]  # doctest: +SKIP
    1.0
    """
    return sweep(engine, EditPart(edit or RomeEdit(), method, gen_tokens), list(facts), concat_evals,
                 shard_size=shard_size, progress=progress, desc=f"{method} sweep")


#: relation templates whose objects are interchangeable (a city for a city, a country for a country)
_OBJECT_KINDS = {"{} is in the city of": "city", "The capital city of {} is": "city",
                 "{} is located in the country of": "country", "{} are located in the country of": "country",
                 "{} is a car company from the country of": "country", "The official language of {} is": "language"}


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


# ---- the edit sweep as an operation -----------------------------------------------------------------
@dataclass(frozen=True)
class EditSweepConfig(Config):
    """ROME over many generated counterfactuals, as a sweep over shards of facts."""

    facts: int = param(8, help="Generated counterfactuals to edit and evaluate", ge=1)
    shard_size: int = param(4, help="Facts per shard (one task each)", ge=1)
    layer: int | None = param(None, help="Edited layer (default: ROME's choice)", unit="layer")
    mom2_samples: int = param(20_000, help="Corpus tokens for ROME's key statistics", ge=64)
    steps: int = param(25, help="ROME's optimisation steps for each new value", ge=1)
    engine: Literal["local", "ray"] = param("local", help="Where shards run: this process or Ray actors")
    workers: int = param(2, help="Ray engine: workers (actors), one model each", ge=1)
    threads: int = param(1, help="Ray engine: torch threads per worker", ge=1)
    ray_address: str | None = param(None, help="Ray engine: a running cluster (default: start a local Ray)",
                                    nonempty=True)
    seed: int = param(0, help="Which generated counterfactuals (a seeded draw)")


@operation("edit-sweep", EditSweepConfig, EditEval, long=True, rtol=1e-3, atol=1e-4,
           example={"facts": 1, "shard_size": 1, "layer": 4, "mom2_samples": 2000, "steps": 5})
def edit_sweep_op(model: HookedModel, cfg: EditSweepConfig, progress: Progress) -> EditEval:
    """ROME over many generated counterfactuals (efficacy, paraphrase, neighbourhood), sharded."""
    eng = make_engine(cfg.engine, model, workers=cfg.workers, threads=cfg.threads, address=cfg.ray_address)
    try:
        run = edit_sweep(eng, generated_counterfacts(cfg.facts, seed=cfg.seed),
                         RomeEdit(cfg.layer, cfg.mom2_samples, config=RomeConfig(steps=cfg.steps)),
                         shard_size=cfg.shard_size, progress=progress)
    finally:
        eng.close()
    ev = run.value
    ev.options = {**ev.options, "engine": run.engine, "shard_seconds": [round(s, 4) for s in run.seconds]}
    return ev
