"""Checks of model files and of the conversion cache, done before any expensive work.

Each check says which file is broken and how: an empty or non-GGUF ``.gguf``, a truncated GGUF,
a ``config.json`` that is not JSON, a model directory without weights, a truncated or
corrupted safetensors file, a cache entry that is not a directory or a cache that cannot be
written. Stale temporary folders of conversions killed mid-way are removed, but only when
their writer is known to be gone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import time
from pathlib import Path

from uncover.core.errors import CacheError, ModelNotFound

WRITER = ".uncover-writer"
STALE_SECONDS = 24 * 3600  # a temporary folder without a writer record is stale after a day


def check_gguf_header(path: Path) -> None:
    """Refuse an empty file or one that does not start with the GGUF magic.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.gguf"; _ = p.write_bytes(b"PK\\x03\\x04zip")
    >>> check_gguf_header(p)
    Traceback (most recent call last):
    ...
    uncover.core.errors.ModelNotFound: ... is not a GGUF file (it starts with b'PK\\x03\\x04', not b'GGUF')
    """
    size = path.stat().st_size
    if size == 0:
        raise ModelNotFound(f"{path} is an empty file, not a GGUF model")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"GGUF":
        raise ModelNotFound(f"{path} is not a GGUF file (it starts with {head!r}, not b'GGUF')")


def check_gguf_complete(path: Path) -> None:
    """Parse the GGUF header and tensor table: refuse a truncated or damaged file (reads no weights)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, IndexError, struct.error ... on damage
        raise ModelNotFound(f"{path} is a damaged or truncated GGUF file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    if not reader.tensors:
        raise ModelNotFound(f"{path} holds no tensors: it is a GGUF file but not a model")
    keys = set(reader.fields)
    if "general.architecture" not in keys:
        raise ModelNotFound(f"{path} has no general.architecture: not a model GGUF (a control vector?)")


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header is damaged or whose data is shorter than the header says."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as e:
        raise ModelNotFound(f"{path} is not a valid safetensors file ({e})") from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise ModelNotFound(f"{path} is truncated: {size} bytes, but its header describes {need}")


def check_config_json(path: Path) -> None:
    """A Hugging Face model directory's ``config.json`` must be a JSON object naming its ``model_type``."""
    cfg = path / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelNotFound(f"{cfg} is not valid JSON ({e}); fix or replace it") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ModelNotFound(f"{cfg} is not a Hugging Face model config (no \"model_type\"): is {path} a model "
                            "directory? Give one saved by save_pretrained, a .gguf file or a hub id")


def check_weights(path: Path) -> None:
    """A Hugging Face model directory must hold complete weights."""
    weights = sorted(path.glob("*.safetensors"))
    others = [p for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")]
    if not weights and not others:
        raise ModelNotFound(f"{path} has a config.json but no weights (model.safetensors or "
                            "model-0000x-of-0000y.safetensors); copy the weights next to it")
    for w in weights:
        check_safetensors(w)


def check_entry_path(entry: Path) -> None:
    """Before converting: the cache entry must be a directory or absent, and its folder writable."""
    if entry.exists() and not entry.is_dir():
        raise CacheError(f"the cache entry {entry} is a file, not a directory; remove it (rm {entry}) "
                         "or point UNCOVER_CACHE elsewhere")
    parent = entry.parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise CacheError(f"the model cache {parent} cannot be written ({probe} is not a writable folder); "
                         "set UNCOVER_CACHE to a writable folder")


def mark_writer(tmp: Path) -> None:
    """Record this process as the writer of the temporary folder ``tmp``."""
    (tmp / WRITER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: Path) -> list[Path]:
    """Remove temporary conversion folders in ``folder`` whose writer is gone; return what was removed.

    A folder is stale when its writer record names this host and a process that no longer
    runs, or when it has no record and is older than a day. Folders of live writers (or of
    other hosts sharing the cache) are left alone.
    """
    removed = []
    if not folder.is_dir():
        return removed
    host = socket.gethostname()
    for tmp in folder.glob("*.tmp-*"):
        if not tmp.is_dir():
            continue
        try:
            rec = json.loads((tmp / WRITER).read_text())
            stale = rec.get("host") == host and not _alive(int(rec.get("pid", -1)))
        except (OSError, ValueError, TypeError):
            stale = time.time() - tmp.stat().st_mtime > STALE_SECONDS
        if stale:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed
