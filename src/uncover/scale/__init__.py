"""Dataset-scale work: corpora streamed from disk, activation shards with a manifest, engines, sweeps.

- :mod:`~uncover.scale.corpora`: text, JSONL, Parquet and saved Hugging Face datasets, streamed, fingerprinted.
- :mod:`~uncover.scale.shards` and :mod:`~uncover.scale.manifest`: one safetensors file per shard and a
  JSON manifest, both written atomically.
- :mod:`~uncover.scale.harvest`: hook names × a corpus -> shards, resumable.
- :mod:`~uncover.scale.reader`: shards read back one at a time (rows, blocks, top-activating contexts,
  an SAE training source).
- :mod:`~uncover.scale.engines`: ``local`` (this process) and ``ray`` (actors holding a model each).
- :mod:`~uncover.scale.sweep`: a map over shards of items plus a reduce.
"""

from __future__ import annotations

from uncover.scale.corpora import Corpus, token_blocks
from uncover.scale.engines import ENGINES, LocalEngine, ModelSpec, RayEngine, make_engine
from uncover.scale.harvest import harvest_corpus
from uncover.scale.manifest import Manifest
from uncover.scale.reader import ShardReader, ShardSource, top_contexts
from uncover.scale.shards import ShardTask, compute_shard, read_shard

__all__ = [
    "ENGINES",
    "Corpus",
    "LocalEngine",
    "Manifest",
    "ModelSpec",
    "RayEngine",
    "ShardReader",
    "ShardSource",
    "ShardTask",
    "compute_shard",
    "harvest_corpus",
    "make_engine",
    "read_shard",
    "token_blocks",
    "top_contexts",
]
