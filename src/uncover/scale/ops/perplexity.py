"""The ``perplexity`` operation: a model's perplexity over a whole corpus, as a sweep over shards of token blocks.

Pruning's evaluation (:func:`uncover.pruning.evaluate.perplexity`) measures a few held-out blocks; a pruned
or edited model saved to disk (``uncover prune --out``) is judged on a real corpus with this operation, on
the local engine or on Ray. Each shard sums its next-token NLL and counts its predicted tokens
(:func:`~uncover.scale.ops.corpus.perplexity_part`); the reduce is ``exp(total / count)``, so the value is the
single-process one up to the order of a float64 sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from uncover.core.config import Config, param
from uncover.core.errors import UsageError
from uncover.core.results import Result
from uncover.ops.registry import operation
from uncover.scale.ops.corpus import corpus_blocks, perplexity_sweep
from uncover.scale.ops.engine import engine_param, open_engine, ray_address_param, threads_param, workers_param

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel


@dataclass
class CorpusPerplexity(Result):
    """Perplexity over a corpus, with each shard's own perplexity and seconds.

    Attributes:
        perplexity: ``exp`` of the mean next-token NLL over every predicted token.
        tokens: predicted tokens (``blocks * (block_len - 1)``).
        blocks, block_len: the token blocks read from the corpus.
        corpus: the corpus's path (``embedded``: the built-in text).
        shards: per shard, ``blocks``, ``perplexity`` and ``seconds``.
        engine: the engine's description.

    >>> r = CorpusPerplexity(12.5, 630, 10, 64, "embedded", [{"shard": 0, "blocks": 10, "perplexity": 12.5,
    ...                      "seconds": 0.5}], {"name": "local"})
    >>> r.summary()
    'Perplexity 12.50 over 630 tokens of embedded (10 blocks of 64 tokens, 1 shard on local)'
    """

    perplexity: float
    tokens: int
    blocks: int
    block_len: int
    corpus: str
    shards: list[dict[str, Any]] = dc_field(default_factory=list)
    engine: dict[str, Any] = dc_field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"Perplexity over {self.corpus}"

    def summary(self) -> str:
        n = len(self.shards)
        return (f"Perplexity {self.perplexity:.2f} over {self.tokens} tokens of {self.corpus} ({self.blocks} blocks "
                f"of {self.block_len} tokens, {n} shard{'s' if n != 1 else ''} on {self.engine.get('name', '?')})")

    def to_frame(self) -> pd.DataFrame:
        """One row per shard: ``shard``, ``blocks``, ``perplexity``, ``seconds``."""
        import pandas as pd

        return pd.DataFrame(self.shards, columns=["shard", "blocks", "perplexity", "seconds"])

    def plot(self) -> go.Figure:
        """Each shard's perplexity, with the corpus's as a line."""
        import plotly.graph_objects as go

        fig = go.Figure(go.Bar(x=[s["shard"] for s in self.shards], y=[s["perplexity"] for s in self.shards],
                               name="shard"))
        fig.add_hline(y=self.perplexity, line_dash="dash", annotation_text=f"corpus {self.perplexity:.2f}")
        fig.update_layout(title=self.title, xaxis_title="shard", yaxis_title="perplexity")
        return fig


@dataclass(frozen=True)
class PerplexityConfig(Config):
    """Perplexity of the loaded model over a corpus, as a sweep over shards of token blocks.

    >>> PerplexityConfig(tokens=640, block_len=64).shard_blocks
    16
    >>> PerplexityConfig(tokens=10, block_len=64)
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: PerplexityConfig: tokens (--tokens) must be at least one block of 64, got 10
    """

    corpus: Path | None = param(
        None,
        help="Corpus: .txt/.md, .jsonl, .parquet, or a folder saved by datasets' save_to_disk (default: the "
        "embedded corpus)",
        path="in_any",
    )
    field: str = param("text", help="JSON field, Parquet or dataset column holding the text", nonempty=True)
    tokens: int | None = param(None, help="Corpus tokens to read (default: the whole corpus)", ge=1)
    block_len: int = param(128, help="Tokens per block (context length)", ge=2)
    shard_blocks: int = param(16, help="Blocks per shard (one task each)", ge=1)
    engine: Literal["local", "ray"] = engine_param()
    workers: int = workers_param()
    threads: int = threads_param()
    ray_address: str | None = ray_address_param()

    def validate(self) -> None:
        if self.tokens is not None and self.tokens < self.block_len:
            raise UsageError(f"PerplexityConfig: tokens (--tokens) must be at least one block of {self.block_len}, "
                             f"got {self.tokens}")


@operation("perplexity", PerplexityConfig, CorpusPerplexity, long=True, rtol=1e-6,
           example={"tokens": 1024, "block_len": 128, "shard_blocks": 4})
def perplexity_op(model: HookedModel, cfg: PerplexityConfig, progress: Progress) -> CorpusPerplexity:
    """Perplexity over a corpus, sharded (e.g. of a pruned model saved with ``prune --out``)."""
    blocks = corpus_blocks(model, cfg)
    with open_engine(model, cfg) as eng:
        run = perplexity_sweep(eng, blocks, shard_size=cfg.shard_blocks, progress=progress)
    shards = [{"shard": i, "blocks": n // (cfg.block_len - 1), "perplexity": math.exp(nll / n),
               "seconds": round(s, 4)} for i, ((nll, n), s) in enumerate(zip(run.partials, run.seconds, strict=True))]
    return CorpusPerplexity(run.value, sum(n for _, n in run.partials), len(blocks), cfg.block_len,
                            str(cfg.corpus) if cfg.corpus is not None else "embedded", shards, run.engine)
