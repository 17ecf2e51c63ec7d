"""The ``harvest`` operation: activations at hooks over a corpus into shards with a manifest (local or Ray).

The work is :func:`uncover.scale.harvest.harvest_corpus`; this module only declares it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from uncover.core.config import Config, param
from uncover.core.results import Result
from uncover.ops.registry import operation
from uncover.scale.harvest import harvest_corpus
from uncover.scale.ops.checks import check_shard_memory, hook_widths, shard_blocks
from uncover.scale.ops.engine import engine_param, ray_address_param, threads_param, workers_param

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel


def _split(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


@dataclass(frozen=True)
class HarvestConfig(Config):
    """Harvest activations at hooks over a corpus into safetensors shards with a manifest."""

    hooks: list[str] = param(
        help="Hook names, comma-separated (blocks.6.hook_resid_post,blocks.6.hook_mlp_out)",
        unit="hook",
        min_items=1,
        parse=_split,
    )
    out: Path = param(help="Folder for the shards and manifest.json (an unfinished one resumes)", path="out_dir")
    corpus: Path | None = param(
        None,
        help="Corpus: .txt/.md (paragraphs), .jsonl, .parquet, or a folder saved by "
        "datasets' save_to_disk (default: the embedded corpus)",
        path="in_any",
    )
    field: str = param("text", help="JSON field, Parquet or dataset column holding the text", nonempty=True)
    tokens: int | None = param(None, help="Corpus tokens to read (default: the whole corpus)", ge=1)
    block_len: int = param(128, help="Tokens per block (context length)", ge=2)
    shard_blocks: int = param(64, help="Blocks per shard", ge=1)
    batch_size: int = param(8, help="Blocks per forward pass", ge=1)
    skip_first: int = param(1, help="Leading positions of each block not kept (attention sinks)", ge=0)
    store_dtype: Literal["float32", "float16", "bfloat16"] = param("float32", help="Stored dtype of the values")
    engine: Literal["local", "ray"] = engine_param()
    workers: int = workers_param()
    threads: int = threads_param()
    ray_address: str | None = ray_address_param()
    overwrite: bool = param(False, help="Delete what the folder holds first instead of resuming")

    def check_model(self, model: HookedModel) -> None:
        """Hooks with a value per position, and the memory of one shard (its pieces and their concatenation)."""
        super().check_model(model)
        widths = hook_widths(model, self.hooks, "HarvestConfig", "hooks (--hooks)")
        blocks = shard_blocks(self.shard_blocks, self.block_len, self.tokens)
        rows = blocks * max(self.block_len - self.skip_first, 0)
        width = sum(widths.values())
        size = {"float32": 4, "float16": 2, "bfloat16": 2}[self.store_dtype]
        check_shard_memory(2 * rows * width * size,
                           f"HarvestConfig: a shard of {blocks} blocks x {self.block_len - self.skip_first} positions "
                           f"at {width} values per position ({', '.join(f'{h}: {w}' for h, w in widths.items())})",
                           "lower --shard-blocks or --block-len, or harvest fewer or narrower hooks "
                           "(logits holds the vocabulary's width per position)")


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
        return (
            f"{t['shards']} shard(s), {t['tokens']} tokens, {t['rows']} rows per hook in {self.out} "
            f"({len(self.computed)} computed, {len(self.skipped)} already done; "
            f"{self.tokens_per_second:,.0f} tokens/s on the {self.manifest['engine'].get('name')} engine)"
        )

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


@operation(
    "harvest",
    HarvestConfig,
    HarvestResult,
    deterministic=False,
    long=True,
    example={"hooks": ["blocks.3.hook_resid_post"], "out": "shards", "tokens": 256, "block_len": 32, "shard_blocks": 4},
)
def harvest(model: HookedModel, cfg: HarvestConfig, progress: Progress) -> HarvestResult:
    """Harvest activations at hooks over a corpus into shards with a manifest (local or Ray engine)."""
    from uncover.scale.corpora import Corpus

    manifest, run = harvest_corpus(
        model,
        cfg.hooks,
        Corpus.open(cfg.corpus, cfg.field),
        cfg.out,
        tokens=cfg.tokens,
        block_len=cfg.block_len,
        shard_blocks=cfg.shard_blocks,
        batch_size=cfg.batch_size,
        skip_first=cfg.skip_first,
        dtype=cfg.store_dtype,
        engine=cfg.engine,
        workers=cfg.workers,
        threads=cfg.threads,
        ray_address=cfg.ray_address,
        overwrite=cfg.overwrite,
        progress=progress,
    )
    progress.message(f"wrote {cfg.out.resolve() / 'manifest.json'}")
    return HarvestResult(
        str(cfg.out.resolve()),
        manifest.to_dict(),
        run["computed"],
        run["skipped"],
        round(run["seconds"], 4),
        round(run["tokens_per_second"], 2),
    )
