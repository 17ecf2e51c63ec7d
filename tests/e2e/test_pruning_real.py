"""Pruning and DoLa on the embedded SmolLM2-135M: Wanda beats magnitude at 50%, bit-exact revert,
a saved pruned model reloads with transformers, DoLa runs, and the two commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from uncover.decoding import compare_decoding, dola_fact_accuracy
from uncover.pruning import magnitude_prune, wanda_prune
from uncover.pruning.calibrate import calibration_tokens
from uncover.pruning.evaluate import heldout_tokens, perplexity, save_pretrained

pytestmark = pytest.mark.e2e
EXE = [sys.executable, "-m", "uncover.cli.main"]


@pytest.fixture
def no_grad():
    with torch.no_grad():
        yield


def test_wanda_beats_magnitude_at_half_sparsity_and_reverts(real, no_grad):
    ref = {k: v.clone() for k, v in real.model.state_dict().items()}
    ev = heldout_tokens(real, 4)
    dense = perplexity(real, ev)
    mag = magnitude_prune(real, 0.5)
    ppl_mag = perplexity(real, ev)
    mag.revert()
    wanda = wanda_prune(real, 0.5, tokens=calibration_tokens(real, 8, 128))
    ppl_wanda = perplexity(real, ev)
    assert abs(wanda.overall_sparsity() - 0.5) < 1e-3
    wanda.revert()
    assert all(torch.equal(ref[k], v) for k, v in real.model.state_dict().items())
    assert perplexity(real, ev) == dense
    assert dense < ppl_wanda < ppl_mag, (dense, ppl_wanda, ppl_mag)


def test_saved_pruned_model_reloads_with_transformers(real, tmp_path, no_grad):
    import transformers as T

    p = magnitude_prune(real, None, "2:4")
    try:
        ids = real.to_tokens("The Eiffel Tower is in the city of")
        want = real(ids)
        out = save_pretrained(real, tmp_path / "pruned")
    finally:
        p.revert()
    again = T.AutoModelForCausalLM.from_pretrained(out, dtype=real.dtype).eval()
    assert torch.equal(again(ids).logits, want)
    assert T.AutoTokenizer.from_pretrained(out)("Paris")["input_ids"] == real.tokenizer("Paris")["input_ids"]


def test_dola_runs_on_the_real_model(real, no_grad):
    facts = dola_fact_accuracy(real)
    assert facts.accuracy("greedy") > 0.7  # the embedded model knows most built-in facts
    assert all(r["premature_layer"] in facts.candidates for r in facts.rows)
    assert len(facts.to_frame()) == len(facts.rows) > 20
    cmp = compare_decoding(real, "The capital of France is", 6)
    row = cmp.rows[0]
    assert row["greedy"] and row["dola"] and len(row["premature_layers"]) <= 6
    assert set(row["premature_layers"]) <= set(range(15, 30, 2))


def test_cli_prune_json_and_errors(tmp_path):
    out = tmp_path / "m"
    p = subprocess.run([*EXE, "prune", "--method", "magnitude", "--sparsity", "0.3", "--eval-blocks", "1",
                        "--out", str(out), "--json"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["method"] == "magnitude" and abs(doc["sparsity"] - 0.3) < 1e-3
    assert [r["label"] for r in doc["evaluation"]] == ["dense", "magnitude 30%"]
    assert doc["evaluation"][1]["perplexity"] > doc["evaluation"][0]["perplexity"]
    assert any(out.glob("*.safetensors")) and (out / "tokenizer.json").exists()
    for bad, words in ((["--sparsity", "1.5"], "[0, 1)"), (["--pattern", "2:2"], "valid: 2:4, 4:8"),
                       (["--method", "obs"], "valid: magnitude, wanda, sparsegpt")):
        q = subprocess.run([*EXE, "prune", *bad], capture_output=True, text=True, timeout=60)
        assert q.returncode == 2 and words in q.stderr and "loading" not in q.stderr  # refused before loading


def test_cli_dola_side_by_side():
    p = subprocess.run([*EXE, "dola", "The capital of Japan is", "-n", "4", "--json"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)["records"][0]
    assert rec["prompt"] == "The capital of Japan is" and rec["greedy"] and rec["dola"]
