"""The command line, run as a user would (subprocess), on the embedded model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EXE = [sys.executable, "-m", "uncover.cli.main"]


def run(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_models_json():
    p = run("models", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert "llama" in info["families"] and info["default_model"] == "SmolLM2-135M-Instruct"


def test_lens_json_is_the_only_stdout(tmp_path):
    html = tmp_path / "lens.html"
    p = run("lens", "The Eiffel Tower is in the city of", "--target", " Paris", "--json", "--html", str(html))
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)  # would fail if anything else were printed
    final = [r for r in doc["records"] if r["kind"] == "target" and r["layer"] == 30]
    assert final[0]["token"] == " Paris" and final[0]["rank"] == 0
    page = html.read_text()
    assert "<script" in page and "<script src" not in page and "Plotly" in page  # plotly.js inlined, no CDN


def test_dla_text_and_usage_errors():
    p = run("dla", "When Mary and John went to the store, John gave a drink to", "--answer", " Mary",
            "--wrong", " John")
    assert p.returncode == 0, p.stderr
    assert "logit diff" in p.stdout
    bad = run("dla", "x", "--answer", " Parisian", "--wrong", " John")
    assert bad.returncode == 2 and "not one" in bad.stderr and len(bad.stderr.strip().splitlines()[-1]) < 300
    missing = run("lens", "x", "--model", "/no/such/model")
    assert missing.returncode == 2 and "no model at" in missing.stderr


def test_tour_writes_report(tmp_path):
    p = run("tour", "--out", str(tmp_path / "t.html"), timeout=900)  # trains the features' SAE on first use
    assert p.returncode == 0, p.stderr
    path = Path(p.stdout.strip())
    page = path.read_text()
    assert path.exists() and "Logit lens" in page and "Direct logit attribution" in page
    assert "Activation patching" in page and "Path patching" in page and "Causal trac" in page
    assert "Attribution patching" in page and "nduction" in page
    assert "SAE features: SAE evaluation" in page and "CE recovered" in page and "<h3>Feature " in page
    assert "<script src" not in page and len(page) > 3_000_000  # plotly.js inlined


def test_train_lens_then_tuned_lens(tmp_path):
    out = tmp_path / "lens.safetensors"
    p = run("train-lens", "--out", str(out), "--steps", "3")
    assert p.returncode == 0, p.stderr
    assert out.exists() and Path(p.stdout.strip()) == out.resolve()
    q = run("lens", "The Eiffel Tower is in the city of", "--tuned", str(out), "--target", " Paris", "--json")
    assert q.returncode == 0, q.stderr
    doc = json.loads(q.stdout)
    assert doc["title"] == "Tuned lens"
    final = [r for r in doc["records"] if r["kind"] == "target" and r["layer"] == 30]
    assert final[0]["rank"] == 0


def test_patch_json_and_length_error():
    p = run("patch", "--task", "ioi", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["kind"] == "PatchResult" and len(doc["records"]) > 100
    bad = run("patch", "--clean", "The cat sat", "--corrupt", "The big cat sat down", "--answer", " on",
              "--wrong", " in")
    assert bad.returncode == 2 and "equal lengths" in bad.stderr


def test_path_json_and_receiver_error():
    p = run("path", "--clean", "When Mary and John went to the store, John gave a drink to",
            "--corrupt", "When Alice and Bob went to the store, Sam gave a drink to", "-a", " Mary", "-w", " John",
            "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["kind"] == "PathPatchResult" and len(doc["records"]) == 30 * 9
    top = min(doc["records"], key=lambda r: r["effect"])
    assert (top["layer"], top["head"]) == (23, 3)
    bad = run("path", "--task", "ioi", "--receivers", "L23.q")
    assert bad.returncode == 2 and "L9H6.q" in bad.stderr


def test_circuit_explicit_pair_and_usage_errors():
    p = run("circuit", "--clean", "When Mary and John went to the store, John gave a drink to",
            "--corrupt", "When Mary and John went to the store, Mary gave a drink to", "-a", " Mary", "-w", " John",
            "--edges", "20", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["kind"] == "Circuit" and len(doc["records"]) == 20
    assert any(r.get("sender") == "L23H3" or "L23H3" in json.dumps(r) for r in doc["records"])
    missing = run("circuit", "--clean", "a b", "--corrupt", "a c")
    assert missing.returncode == 2 and "--answer" in missing.stderr
    multi = run("circuit", "--clean", "The cat sat", "--corrupt", "The dog sat", "-a", " Parisian", "-w", " in")
    assert multi.returncode == 2 and "not one" in multi.stderr
