"""The manifest of a shard directory: what was harvested, from what, and which shards are done.

``manifest.json`` beside the shards holds the format and version, the model's identity (name,
source, family, sizes and weights fingerprint), the corpus (source, kind, field, fingerprint),
the hooks and their feature sizes, the stored dtype, the positions kept, the settings, and one
record per shard (file, status ``pending``/``done``, blocks, tokens, rows, a digest of its tokens
and of its file, seconds, the worker that wrote it). It is rewritten atomically (temporary name,
then rename) after every shard, so a job stopped at any moment resumes from it: shards marked
``done`` whose file is present are not computed again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from uncover.core.errors import UncoverError, UsageError

FORMAT = "uncover-harvest"
VERSION = 1
NAME = "manifest.json"
#: what must match for a job to resume into an existing directory
IDENTITY = ("model", "corpus", "hooks", "dtype", "positions", "settings")


@dataclass
class Manifest:
    """The manifest of one harvest (see the module docstring for its fields).

    >>> m = Manifest({"fingerprint": "ab"}, {"fingerprint": "cd"}, ["hook_embed"], {"hook_embed": [576]}, "float32",
    ...              {"block_len": 8, "skip_first": 1}, {"tokens": 64})
    >>> m.rows_per_block, m.done
    (7, [])
    """

    model: dict[str, Any]
    corpus: dict[str, Any]
    hooks: list[str]
    features: dict[str, list[int]]
    dtype: str
    positions: dict[str, Any]
    settings: dict[str, Any]
    shards: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"
    engine: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION

    @property
    def rows_per_block(self) -> int:
        return int(self.positions["block_len"]) - int(self.positions["skip_first"])

    @property
    def done(self) -> list[int]:
        """Indices of the shards marked done."""
        return [s["index"] for s in self.shards if s["status"] == "done"]

    def totals(self) -> dict[str, int]:
        """Blocks, tokens and rows over the done shards."""
        done = [s for s in self.shards if s["status"] == "done"]
        return {k: sum(int(s[k]) for s in done) for k in ("blocks", "tokens", "rows")} | {"shards": len(done)}

    def record(self, rec: dict[str, Any]) -> None:
        """Set shard ``rec["index"]``'s record (the list grows as shards are planned)."""
        i = int(rec["index"])
        while len(self.shards) <= i:
            self.shards.append({"index": len(self.shards), "status": "pending"})
        self.shards[i] = rec

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in IDENTITY}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "version": self.version,
            **{k: v for k, v in asdict(self).items() if k not in ("format", "version")},
            "totals": self.totals(),
        }

    def write(self, out: str | Path) -> Path:
        """Write ``out/manifest.json`` atomically."""
        path = Path(out) / NAME
        tmp = path.with_name(f".{NAME}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def read(cls, out: str | Path) -> Manifest:
        """The manifest of the shard directory ``out``."""
        path = Path(out) / NAME
        if not path.is_file():
            raise UsageError(f"{out}: no {NAME}; write shards with `uncover harvest --out {out}`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UncoverError(f"{path}: broken manifest ({e}); harvest again into a new folder") from None
        if data.get("format") != FORMAT:
            raise UncoverError(f"{path}: not an uncover harvest manifest (format {data.get('format')!r})")
        if int(data.get("version", 0)) > VERSION:
            raise UncoverError(
                f"{path}: manifest version {data['version']} is newer than this uncover "
                f"(reads {VERSION}); upgrade uncover"
            )
        data.pop("totals", None)
        return cls(**data)


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two nested dicts.

    >>> differences({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}})
    ['a.c: 2 -> 3']
    """
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out
