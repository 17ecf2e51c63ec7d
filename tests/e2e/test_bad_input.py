"""Bad input through the CLI, as a new user would type it: exit code 2 and one line naming what is wrong, never a
traceback and never the catch-all "unexpected failure" (issue 13's classes: empty text, non-text, numbers out of
range or not finite, broken files, unwritable outputs, inconsistent values)."""

from __future__ import annotations

import pytest

from uncover.cli import common
from uncover.cli.main import main

pytestmark = pytest.mark.e2e

IOI = ["--clean", "When Mary and John went to the store, John gave a drink to",
       "--corrupt", "When Mary and John went to the store, Mary gave a drink to",
       "--answer", " Mary", "--wrong", " John"]


@pytest.fixture
def files(tmp_path):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    (tmp_path / "binary.csv").write_bytes(b"\x00\xff\xfe" * 100)
    (tmp_path / "labels.csv").write_text("text,label\nThe sky is blue,yes\nGrass is red,no\n")
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "garbage.gguf").write_bytes(b"\x00garbage" * 50)
    bad = tmp_path / "badcfg"
    bad.mkdir()
    (bad / "config.json").write_text("{ not json")
    (tmp_path / "vec.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    return tmp_path


def cases(t):
    return [
        # empty or whitespace-only text
        ["lens", ""], ["lens", "   "], ["dla", " ", "-a", " Mary", "-w", " John"],
        ["patch", "--clean", "", "--corrupt", "x", "-a", " a", "-w", " b"],
        ["attribute", "--clean", " ", "--corrupt", "x", "-a", " a", "-w", " b"],
        ["circuit", "--clean", "  ", "--corrupt", "  ", "-a", " a", "-w", " b"],
        ["steer", ""], ["dola", "  "], ["heads", "--pattern", ""],
        ["knowledge-neurons", "--prompt", "", "--target", " Paris"],
        # text that is not text
        ["lens", "x", "--target", "\udcff"], ["lens", "a\x00b"],
        ["neurons", "-l", "3", "--corpus", str(t / "binary.txt")],
        ["memorization", "scan", "--text", str(t / "binary.txt")],
        ["probe", "--data", str(t / "binary.csv")], ["probe", "--data", str(t / "labels.csv")],
        # numbers out of range or not finite
        ["lens", "x", "--k", "0"], ["lens", "x", "--k", "-1"], ["lens", "x", "--k", "100000"],
        ["steer", "x", "-n", "0"], ["steer", "x", "--scale", "nan"], ["heads", "--detect", "induction", "--n", "0"],
        ["heads", "--detect", "induction", "--top", "-1"], ["path", *IOI, "--positions", "9999"],
        ["path", *IOI, "--pairs", "-1"], ["grok", "--lr", "nan"], ["grok", "--threads", "0"], ["grok", "--steps", "-1"],
        ["sae", "train", "--out", str(t / "run"), "--batch-size", "0"],
        ["sae", "train", "--out", str(t / "run"), "--block-len", "1"],
        ["sae", "train", "--out", str(t / "run"), "--tokens", "0"],
        ["sae", "train", "--out", str(t / "run"), "--lr", "nan"],
        ["sae", "train", "--out", str(t / "run"), "--sparsity-coeff", "-1"],
        ["sae", "train", "--out", str(t / "run"), "--hook", "logits"],
        ["trace", "--prompt", "The Eiffel Tower is in", "--subject", "The Eiffel Tower", "--noise", "inf"],
        ["dola", "x", "--alpha", "nan"], ["dola", "x", "--repetition-penalty", "nan"],
        ["superposition", "--decay", "nan"], ["circuit", "--threshold", "nan"], ["circuit", "--tau", "nan"],
        ["circuit", "--prompts", "0"], ["lens", "x", "--seed", "-1"],
        # inconsistent values
        ["dla", "When Mary and John went", "-a", " Mary", "-w", " Mary"],
        ["dla", "x", "-a", " Parisian", "-w", " John"], ["lens", "x", "-t", " Parisian"],
        ["steer", "x", "--layer", "99"], ["neurons", "-l", "99"], ["lens", "x", "--tuned", str(t / "nope")],
        # broken model and vector files
        ["lens", "x", "--model", str(t / "empty.gguf")], ["lens", "x", "--model", str(t / "garbage.gguf")],
        ["lens", "x", "--model", str(t / "badcfg")], ["lens", "x", "--model", "/no/such/model"],
        ["lens", "x", "--device-map", "bogus"], ["lens", "x", "--device-map", "auto", "--device", "cpu"],
        ["steer", "x", "--vector", str(t / "vec.safetensors")], ["steer", "x", "--vector", str(t / "a_file")],
        # outputs that cannot be written
        ["lens", "x", "--html", str(t / "a_dir")], ["lens", "x", "--html", str(t / "missing" / "x.html")],
        ["lens", "x", "--result", str(t / "a_dir")], ["prune", "--out", str(t / "a_file")],
        ["train-lens", "--out", str(t / "a_dir")],
    ]


def test_every_bad_input_is_one_clear_line(real, files, monkeypatch, capsys):
    monkeypatch.setattr(common, "load_model", lambda name=None, device=None, dtype=None, **placement: (
        real if name is None and not any(placement.values())
        else __import__("uncover").load(name, device=device, dtype=dtype, **placement)))
    bad = []
    for argv in cases(files):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        last = err[-1] if err else ""
        ok = e.value.code == 2 and last.startswith("uncover: error:") and "Traceback" not in "\n".join(err) \
            and "unexpected failure" not in last and len(last) < 400
        if not ok:
            bad.append((argv, e.value.code, last))
    assert not bad, "\n".join(map(repr, bad))
