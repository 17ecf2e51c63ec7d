"""Unusable conversion-cache states (issue 13, new probes): each gives a clear error before converting, or is
rebuilt safely; two processes asking for one entry convert it once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_load import _offline_cache  # noqa: F401  (fixture: UNCOVER_CACHE in tmp_path)
from uncover.core.errors import CacheError
from uncover.models import load as L


def _gguf(tmp_path: Path) -> Path:
    g = tmp_path / "tiny.gguf"
    g.write_bytes(b"GGUF fake tiny model")
    return g


def fake_convert(calls: list):
    """A conversion that writes a small valid entry (config.json + weights + manifest) the way the real one does."""

    def convert(gguf: Path, entry: Path) -> None:
        calls.append(entry)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(entry.name + f".tmp-fake{len(calls)}")
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"weights")
        L.write_manifest(tmp, str(gguf))
        L._install(tmp, entry)

    return convert


def _entry(tmp_path: Path, monkeypatch) -> tuple[Path, Path, list]:
    gguf, calls = _gguf(tmp_path), []
    monkeypatch.setattr(L, "convert_gguf", fake_convert(calls))
    monkeypatch.setattr(L, "check_gguf_complete", lambda p: None)  # a stand-in file, not a real GGUF
    entry = L.gguf_entry(gguf)
    assert calls == [entry]
    return gguf, entry, calls


def test_a_directory_where_a_file_belongs_is_rebuilt(tmp_path, monkeypatch):
    gguf, entry, calls = _entry(tmp_path, monkeypatch)
    (entry / "config.json").unlink()
    (entry / "config.json").mkdir()
    assert L.gguf_entry(gguf) == entry and len(calls) == 2 and (entry / "config.json").is_file()
    (entry / L.MANIFEST).unlink()
    (entry / L.MANIFEST).mkdir()  # the manifest a folder
    assert L.gguf_entry(gguf) == entry and len(calls) == 3 and (entry / L.MANIFEST).is_file()


def test_an_unreadable_entry_is_a_cache_error_and_rebuilt(tmp_path, monkeypatch):
    gguf, entry, calls = _entry(tmp_path, monkeypatch)
    real = L.file_digest

    def denied(p):
        if Path(p).parent == entry:
            raise PermissionError(13, "Permission denied", str(p))
        return real(p)

    monkeypatch.setattr(L, "file_digest", denied)
    with pytest.raises(CacheError, match="cannot be read"):
        L.verify_entry(entry)
    monkeypatch.setattr(L, "file_digest", real)
    (entry / L.MANIFEST).write_text("{not json")
    with pytest.raises(CacheError, match="is unreadable"):
        L.verify_entry(entry)
    assert L.gguf_entry(gguf) == entry and len(calls) == 2


def test_a_bad_entry_that_cannot_be_removed_is_refused_before_converting(tmp_path, monkeypatch):
    gguf, entry, calls = _entry(tmp_path, monkeypatch)
    (entry / "model.safetensors").write_bytes(b"other")  # corrupt: needs a rebuild

    def cannot(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(L.shutil, "rmtree", cannot)
    with pytest.raises(CacheError, match=r"unusable and cannot be removed .*rm -r"):
        L.gguf_entry(gguf)
    assert len(calls) == 1  # no second conversion was started


_LOADER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from tests.unit.test_cache_states import fake_convert
from uncover.models import load as L
calls = []
fast = fake_convert(calls)
def slow(gguf, entry):
    with open(sys.argv[2], "a") as f:
        f.write("converting\\n")
    time.sleep(1.5)
    fast(gguf, entry)
L.convert_gguf = slow
L.check_gguf_complete = lambda p: None
print(L.gguf_entry(Path(sys.argv[1])))
"""


def test_two_processes_loading_at_once_convert_once(tmp_path):
    gguf, log = _gguf(tmp_path), tmp_path / "log"
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "UNCOVER_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", _LOADER, str(gguf), str(log), root], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    assert outs[0][0] == outs[1][0] and log.read_text() == "converting\n"
    entry = Path(outs[0][0].strip())
    L.verify_entry(entry)
    assert sorted(p.name for p in entry.parent.iterdir()) == sorted([entry.name, entry.name + ".lock"])
