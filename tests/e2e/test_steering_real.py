"""Steering on the embedded model: a sentiment vector shifts continuations while KL on neutral
text stays small; the model is unchanged afterwards; the CLI refuses bad input with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from uncover.data.labelled import sentiment_pairs
from uncover.steering import caa, sweep

pytestmark = pytest.mark.e2e

PROMPTS = ["I went to see the new film yesterday. I thought it was", "My day at work was",
           "The food at the new place downtown is", "Honestly, the weekend was"]


def test_sentiment_vector_shifts_continuations_with_small_kl(real):
    ids = real.to_tokens("The Eiffel Tower is in the city of")
    before = real(ids)
    sp = sentiment_pairs()
    steer = caa(real, sp.positive, sp.negative, [12])
    from uncover.data.corpus import token_blocks

    neutral = token_blocks(real, block_len=32, split="heldout")[:2]
    r = sweep(real, steer, PROMPTS, [0.0, 2.0, 4.0], max_new_tokens=16, neutral=neutral)
    zero, moderate, strong = r.score
    assert moderate > zero + 0.03 and strong > zero + 0.05  # more positive words (docs: 0.003, 0.081, 0.129)
    assert r.kl[0] == 0.0 and r.kl[1] < 0.5 < r.kl[2] * 2  # moderate strength: small KL on neutral text
    assert r.kl[1] < r.kl[2] and r.generations[1] != r.generations[0]
    assert torch.equal(real(ids), before)  # nothing left attached


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "uncover.cli.main", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_steer_side_by_side_and_usage_errors(tmp_path):
    p = run("steer", "I hate you because", "--layer", "6", "--scale", "5", "-n", "6", "--json")
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)["records"][0]
    assert rec["prompt"] == "I hate you because" and rec["steered"] != rec["unsteered"]
    bad = run("steer", "Hi", "--layer", "30")
    assert bad.returncode == 2 and "out of range" in bad.stderr
    from safetensors.torch import save_file

    save_file({"layer.3": torch.full((576,), float("nan"))}, str(tmp_path / "nan.safetensors"),
              metadata={"uncover": json.dumps({"point": "hook_resid_pre"})})
    nan = run("steer", "Hi", "--vector", str(tmp_path / "nan.safetensors"))
    assert nan.returncode == 2 and "NaN" in nan.stderr
    (tmp_path / "empty.csv").write_text("text,label\n")
    empty = run("probe", "--data", str(tmp_path / "empty.csv"))
    assert empty.returncode == 2 and "empty dataset" in empty.stderr
