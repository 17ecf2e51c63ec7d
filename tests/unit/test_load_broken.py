"""Broken model files and cache states: a clear error naming the file, before any conversion, and nothing left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.test_load import _offline_cache, model_dir  # noqa: F401  (fixtures)
from uncover import load
from uncover.core.errors import CacheError, ModelNotFound
from uncover.models import checks
from uncover.models import load as L


def _cache_files(tmp_path: Path) -> list[Path]:
    root = tmp_path / "cache"
    return [p for p in root.rglob("*")] if root.exists() else []


@pytest.mark.parametrize("content, words", [
    (b"", "empty file"),
    (b"PK\x03\x04 a zip file", "not a GGUF file"),
    (b"GGUF\x03\x00\x00\x00" + b"\x00" * 5, "damaged or truncated"),
])
def test_broken_gguf_is_refused_and_caches_nothing(tmp_path, content, words):
    p = tmp_path / "m.gguf"
    p.write_bytes(content)
    with pytest.raises(ModelNotFound, match=words):
        load(p, device="cpu")
    assert [f for f in _cache_files(tmp_path) if f.is_file()] == []


def test_truncated_real_gguf_is_refused(tmp_path):
    try:
        src = L.embedded_gguf()
    except ModelNotFound:
        pytest.skip("the embedded model is not installed")
    p = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        p.write_bytes(f.read(2_000_000))
    with pytest.raises(ModelNotFound, match="damaged or truncated"):
        load(p, device="cpu")
    assert [f for f in _cache_files(tmp_path) if f.is_file()] == []


def test_broken_model_directories(tmp_path, model_dir):  # noqa: F811
    bad_json = tmp_path / "bad-json"
    shutil.copytree(model_dir, bad_json)
    (bad_json / "config.json").write_text("{ not json")
    with pytest.raises(ModelNotFound, match=r"config.json is not valid JSON"):
        load(bad_json, device="cpu")

    no_weights = tmp_path / "no-weights"
    shutil.copytree(model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelNotFound, match="no weights"):
        load(no_weights, device="cpu")

    cut = tmp_path / "cut"
    shutil.copytree(model_dir, cut)
    w = cut / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelNotFound, match="model.safetensors is truncated"):
        load(cut, device="cpu")

    garbage = tmp_path / "garbage"
    shutil.copytree(model_dir, garbage)
    (garbage / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelNotFound, match="not a valid safetensors file"):
        load(garbage, device="cpu")


def test_cache_entry_replaced_by_a_file_is_refused_before_converting(tmp_path, monkeypatch):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF fake tiny model")
    entry = L.cache_dir() / "gguf" / f"tiny-{L.file_digest(gguf)}"
    entry.parent.mkdir(parents=True)
    entry.write_text("oops")
    converted = []
    monkeypatch.setattr(L, "convert_gguf", lambda g, e: converted.append(e))
    with pytest.raises(CacheError, match="is a file, not a directory"):
        L.gguf_entry(gguf)
    assert converted == []


def test_stale_temporary_folders_are_cleaned_only_when_their_writer_is_gone(tmp_path):
    folder = tmp_path / "gguf"
    dead, live, unknown_old, unknown_new = (folder / f"m-{k}.tmp-x{k}" for k in range(4))
    for d in (dead, live, unknown_old, unknown_new):
        d.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (dead / checks.WRITER).write_text(json.dumps({"host": os.uname().nodename, "pid": proc.pid}))
    checks.mark_writer(live)
    old = time.time() - 2 * checks.STALE_SECONDS
    os.utime(unknown_old, (old, old))
    removed = checks.clean_stale(folder)
    assert sorted(removed) == sorted([dead, unknown_old])
    assert live.exists() and unknown_new.exists()


_SLOW_CONVERSION = """
import sys, time
from pathlib import Path
import transformers as T
from uncover.models import load as L
L.check_gguf_complete = lambda p: None
def slow(*a, **k):
    print("converting", flush=True)
    time.sleep(600)
T.AutoTokenizer.from_pretrained = slow
L.convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def test_conversion_killed_midway_leaves_nothing_after_the_next_load(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF fake tiny model")
    entry = L.cache_dir() / "gguf" / "tiny-x"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CONVERSION, str(gguf), str(entry)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert proc.stdout.readline().strip() == "converting"
        tmps = list(entry.parent.glob("*.tmp-*"))
        assert len(tmps) == 1 and (tmps[0] / checks.WRITER).exists()
        assert checks.clean_stale(entry.parent) == []  # the writer is alive: left alone
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert checks.clean_stale(entry.parent) == tmps
    assert list(entry.parent.iterdir()) == []
