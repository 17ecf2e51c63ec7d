"""Loading: local HF directories, the GGUF conversion cache, and clear errors (never the network)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import transformers as T

from tests.conftest import tiny_hf, tokens
from tests.unit.test_hooks import word_tokenizer
from uncover import HookedModel, load
from uncover.core.errors import CacheError, ModelNotFound, UncoverError, UnsupportedModel
from uncover.models import load as L


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path, monkeypatch):
    """Converted models go to a temporary cache; the hub is offline."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("UNCOVER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny Llama and its word tokenizer, saved like a hub download."""
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_hf("llama").save_pretrained(d)
    word_tokenizer().save_pretrained(d)
    return d


def make_entry(src: Path, entry: Path) -> Path:
    shutil.copytree(src, entry)
    L.write_manifest(entry, "test")
    return entry


# ---- cache entries -----------------------------------------------------------------------------------
def test_cache_dir_follows_env(tmp_path):
    assert L.cache_dir() == tmp_path / "cache"


def test_verify_entry_accepts_a_complete_entry(model_dir, tmp_path):
    entry = make_entry(model_dir, tmp_path / "e")
    L.verify_entry(entry)
    listed = json.loads((entry / L.MANIFEST).read_text())["files"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(listed)
    assert L.MANIFEST not in listed


def test_verify_entry_rejects_damage(model_dir, tmp_path):
    def fresh(name):
        return make_entry(model_dir, tmp_path / name)

    e = fresh("truncated")
    w = e / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(CacheError, match="size"):
        L.verify_entry(e)

    e = fresh("flipped")  # same size, one byte changed
    w = e / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="digest"):
        L.verify_entry(e)

    e = fresh("no-manifest")
    (e / L.MANIFEST).unlink()
    with pytest.raises(CacheError, match="manifest"):
        L.verify_entry(e)

    e = fresh("bad-json")
    (e / L.MANIFEST).write_text("{not json")
    with pytest.raises(CacheError):
        L.verify_entry(e)

    e = fresh("bad-meta")
    (e / L.MANIFEST).write_text(json.dumps({"files": {"config.json": 3}}))
    with pytest.raises(CacheError):
        L.verify_entry(e)

    e = fresh("empty-manifest")  # a manifest that lists nothing proves nothing
    (e / L.MANIFEST).write_text(json.dumps({"files": {}}))
    with pytest.raises(CacheError):
        L.verify_entry(e)

    e = fresh("missing-file")
    (e / "config.json").unlink()
    with pytest.raises(CacheError, match="missing"):
        L.verify_entry(e)

    with pytest.raises(CacheError):
        L.verify_entry(tmp_path / "does-not-exist")


def _fake_gguf(tmp_path: Path, content: bytes = b"GGUF fake tiny model") -> Path:
    p = tmp_path / "tiny.gguf"
    p.write_bytes(content)
    return p


def test_gguf_entry_converts_once_and_rebuilds_bad_entries(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(L, "check_gguf_complete", lambda p: None)  # a stand-in file, not a real GGUF
    calls = []

    def fake_convert(gguf: Path, entry: Path) -> None:
        calls.append(entry)
        entry.parent.mkdir(parents=True, exist_ok=True)
        if entry.exists():
            shutil.rmtree(entry)
        make_entry(model_dir, entry)

    monkeypatch.setattr(L, "convert_gguf", fake_convert)
    gguf = _fake_gguf(tmp_path)
    entry = L.gguf_entry(gguf)
    assert len(calls) == 1 and entry.parent == tmp_path / "cache" / "gguf"
    assert entry.name.startswith("tiny-") and L.file_digest(gguf) in entry.name
    assert L.gguf_entry(gguf) == entry and len(calls) == 1  # cached: no conversion
    (entry / "model.safetensors").write_bytes(b"partial")
    assert L.gguf_entry(gguf) == entry and len(calls) == 2  # damaged: rebuilt
    L.verify_entry(entry)
    (entry / L.MANIFEST).unlink()
    L.gguf_entry(gguf)
    assert len(calls) == 3
    gguf.write_bytes(b"another GGUF file")  # a different file gets its own entry
    assert L.gguf_entry(gguf) != entry and len(calls) == 4


def test_gguf_entry_raises_when_conversion_stays_bad(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "check_gguf_complete", lambda p: None)  # a stand-in file, not a real GGUF
    monkeypatch.setattr(L, "convert_gguf", lambda gguf, entry: entry.mkdir(parents=True, exist_ok=True))
    with pytest.raises(CacheError):
        L.gguf_entry(_fake_gguf(tmp_path))


def test_convert_gguf_writes_a_verified_entry_atomically(model_dir, tmp_path, monkeypatch):
    """The real conversion code, with transformers' GGUF reading replaced by the tiny model."""
    seen = []
    real_model, real_tok = T.AutoModelForCausalLM.from_pretrained, T.AutoTokenizer.from_pretrained

    def fake_model(src, gguf_file=None, **kw):
        seen.append(("model", gguf_file))
        return real_model(model_dir, **kw)

    def fake_tok(src, gguf_file=None, **kw):
        seen.append(("tok", gguf_file))
        return real_tok(model_dir)

    monkeypatch.setattr(T.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(T.AutoTokenizer, "from_pretrained", fake_tok)
    monkeypatch.setattr(L, "check_gguf_complete", lambda path: None)  # the fake GGUF has no real header
    gguf = _fake_gguf(tmp_path)
    entry = tmp_path / "cache" / "gguf" / "x"
    L.convert_gguf(gguf, entry)
    L.verify_entry(entry)
    assert ("model", "tiny.gguf") in seen and ("tok", "tiny.gguf") in seen
    assert [p.name for p in entry.parent.iterdir()] == ["x"]  # no temporary directories left

    # a failing conversion leaves neither an entry nor temporary files
    def broken(*a, **k):
        raise RuntimeError("dequantisation failed")

    monkeypatch.setattr(T.AutoModelForCausalLM, "from_pretrained", broken)
    with pytest.raises(RuntimeError):
        L.convert_gguf(gguf, tmp_path / "cache" / "gguf" / "y")
    assert [p.name for p in entry.parent.iterdir()] == ["x"]


def test_load_gguf_goes_through_the_cache(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(L, "check_gguf_complete", lambda p: None)  # a stand-in file, not a real GGUF
    calls = []

    def fake_convert(gguf: Path, entry: Path) -> None:
        calls.append(gguf)
        entry.parent.mkdir(parents=True, exist_ok=True)
        make_entry(model_dir, entry)

    monkeypatch.setattr(L, "convert_gguf", fake_convert)
    gguf = _fake_gguf(tmp_path)
    m = load(gguf, device="cpu")
    assert isinstance(m, HookedModel) and m.name == str(gguf) and len(calls) == 1
    load(str(gguf), device="cpu")
    assert len(calls) == 1


# ---- local directories --------------------------------------------------------------------------------
def test_load_local_dir(model_dir):
    m = load(model_dir, device="cpu")
    assert isinstance(m, HookedModel) and m.cfg.family == "llama" and m.name == str(model_dir)
    assert not any(p.requires_grad for p in m.parameters()) and not m.model.training
    ref = tiny_hf("llama")
    toks = tokens(2, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(toks), ref(toks).logits, rtol=0, atol=0)
    assert m.to_tokens("w5 w6").tolist() == [[5, 6]]
    assert load(model_dir, device="cpu", dtype="float64").dtype == torch.float64
    assert load(model_dir, device="cpu", dtype=torch.bfloat16).dtype == torch.bfloat16
    assert load(model_dir, device="cpu", dtype="fp16").dtype == torch.float16
    with pytest.raises(UncoverError, match="valid: float32"):
        load(model_dir, device="cpu", dtype="float17")


def test_load_dir_without_tokenizer_says_how_to_fix(tmp_path):
    d = tmp_path / "no-tok"
    tiny_hf("llama").save_pretrained(d)
    with pytest.raises(ModelNotFound, match="save_pretrained"):
        load(d, device="cpu")


def test_load_unsupported_architecture_before_reading_weights(tmp_path, monkeypatch):
    d = tmp_path / "bert"
    T.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, is_decoder=True).save_pretrained(d)  # config only: no weights at all
    with pytest.raises(UnsupportedModel, match="supported: .*llama"):
        load(d, device="cpu")


def test_missing_paths_fail_fast(tmp_path):
    t = time.perf_counter()
    with pytest.raises(ModelNotFound):
        load("/nonexistent/dir", device="cpu")
    with pytest.raises(ModelNotFound, match="does not exist"):
        load("missing.gguf", device="cpu")
    with pytest.raises(ModelNotFound, match="does not exist"):
        load(tmp_path / "nope.gguf", device="cpu")
    with pytest.raises(ModelNotFound, match="config.json"):
        load(tmp_path, device="cpu")  # a directory, but not a model
    with pytest.raises(ModelNotFound):
        load("./relative/missing", device="cpu")
    with pytest.raises(ModelNotFound):
        load("a/b/c", device="cpu")  # not a hub id (org/name) and not a path
    assert time.perf_counter() - t < 5


def test_hub_id_offline_says_how_to_fix():
    t = time.perf_counter()
    with pytest.raises(ModelNotFound) as e:
        load("uncover-tests-nonexistent-org/no-such-model-xyz", device="cpu")
    msg = str(e.value)
    assert "uncover-tests-nonexistent-org/no-such-model-xyz" in msg and "Fix" in msg
    assert time.perf_counter() - t < 30


def test_embedded_gguf_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(L, "EMBEDDED_PACKAGE", "uncover_no_such_package_xyz")
    with pytest.raises(ModelNotFound, match="pip install"):
        L.embedded_gguf()
