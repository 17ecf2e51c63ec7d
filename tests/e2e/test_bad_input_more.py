"""Bad input through the CLI, second round (issue 13 rechecked with other inputs): every case is one
``uncover: error:`` line with exit 2, before any work, never a traceback or the catch-all.

Classes: command-line parsing (a number that is not one, unknown options), devices and dtypes,
empty paths and model names, lists that repeat or are empty, zero that means nothing, broken
user files (pair files, SAE and transcoder directories, tuned lenses), hooks an operation cannot
use, memory a setting needs, tokens beyond the context, seeds, unwritable outputs of rerun and
compare, and messages that echo a huge input. A generated sweep gives every numeric option of
every command a value that is not a number, and every float option NaN and infinity.
"""

from __future__ import annotations

import json
import shutil
from typing import get_args, get_origin

import pytest
import torch
from safetensors.torch import load_file, save_file

from uncover.cli import common
from uncover.cli.main import main
from uncover.core.config import _optional, fields_of
from uncover.ops.registry import operations

pytestmark = pytest.mark.e2e

IOI = ["--clean", "When Mary and John went to the store, John gave a drink to",
       "--corrupt", "When Mary and John went to the store, Mary gave a drink to",
       "--answer", " Mary", "--wrong", " John"]


def _sae_dir(root, model):
    """A small SAE directory in SAELens format (d_in = d_model, hook blocks.2.hook_resid_post)."""
    from uncover.sae import SAEConfig, TopKSAE

    d = model.cfg.d_model
    return TopKSAE(SAEConfig(d_in=d, d_sae=2 * d, architecture="topk", k=4,
                             hook_name="blocks.2.hook_resid_post")).save(root)


def _broken_saes(t, model):
    good = _sae_dir(t / "sae-good", model)
    out = {}

    def variant(name, change):
        d = t / f"sae-{name}"
        shutil.copytree(good, d)
        change(d)
        out[name] = d

    def weights(change):
        return lambda d: save_file(change(load_file(d / "sae_weights.safetensors")), d / "sae_weights.safetensors")

    variant("cfg-garbage", lambda d: (d / "cfg.json").write_text("{ not json"))
    variant("cfg-list", lambda d: (d / "cfg.json").write_text("[1, 2]"))
    variant("cfg-binary", lambda d: (d / "cfg.json").write_bytes(bytes(range(256))))
    variant("w-truncated", lambda d: (d / "sae_weights.safetensors").write_bytes(
        (d / "sae_weights.safetensors").read_bytes()[:300]))
    variant("w-int", weights(lambda w: {k: v.to(torch.int64) for k, v in w.items()}))
    variant("w-nan", weights(lambda w: {k: torch.full_like(v, float("nan")) for k, v in w.items()}))
    variant("w-keys", weights(lambda w: {k + "_x": v for k, v in w.items()}))
    return out


def _broken_lenses(t, model):
    from safetensors import safe_open

    from uncover.lenses.tuned_lens import TunedLens

    good = TunedLens.for_model(model).save(t / "good.lens.safetensors")
    w = load_file(good)
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    save_file(w, t / "badinfo.safetensors", metadata={**meta, "info": "{ bad"})
    save_file(w, t / "badn.safetensors", metadata={**meta, "n_layers": "x"})
    save_file({k + "x": v for k, v in w.items()}, t / "keys.safetensors", metadata=meta)
    save_file({k: torch.full_like(v, float("nan")) for k, v in w.items()}, t / "nan.safetensors", metadata=meta)
    return [t / f"{n}.safetensors" for n in ("badinfo", "badn", "keys", "nan")]


@pytest.fixture
def files(tmp_path, real):
    t = tmp_path
    (t / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (t / "list.jsonl").write_text("[1, 2]\n")
    (t / "number.jsonl").write_text(json.dumps({"clean": 1, "corrupt": "b", "answer": " a", "wrong": " b"}) + "\n")
    (t / "a_file").write_text("x")
    (t / "a_dir").mkdir()
    for name, text in (("not-a-model", '{"p": 7, "d_model": 128}'), ("list-config", "[1, 2]")):
        (t / name).mkdir()
        (t / name / "config.json").write_text(text)
    tc = t / "tc-garbage"
    tc.mkdir()
    (tc / "cfg.json").write_text("{ not json")
    (tc / "sae_weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    import uncover

    uncover.run("lens", real, prompt="x").save(t / "result.safetensors")
    return t, _broken_saes(t, real), _broken_lenses(t, real)


def cases(files):
    t, saes, lenses = files
    res = str(t / "result.safetensors")
    return [
        # the command line itself (typer's box before)
        ["lens", "x", "--k", "abc"], ["lens", "x", "--bogus"], ["lenz", "x"], ["dla", "x"], ["sae", "trian"],
        ["heads", "--detect", "induction", "--n", "1.5"], ["lens", "x", "extra", "args"],
        # devices and dtypes, before the model loads
        ["lens", "x", "--device", "bogus"], ["lens", "x", "--device", "cpu:x"], ["lens", "x", "--device", ""],
        ["lens", "x", "--device", "cuda:99"], ["lens", "x", "--dtype", "int8"], ["dla", "x", "-a", " a", "-w", " b",
                                                                                  "--device", "gpu"],
        # empty paths and model names (the current folder before)
        ["prune", "--out", ""], ["sae", "train", "--out", " "], ["neurons", "-l", "3", "--corpus", ""],
        ["lens", "x", "--tuned", ""], ["lens", "x", "--model", ""], ["lens", "x", "--model", "   "],
        ["lens", "x", "--model", str(t / "not-a-model")], ["dla", "x", "-a", " a", "-w", " b", "--model",
                                                            str(t / "list-config")],
        # lists that repeat an item or are empty; zero that means nothing
        ["neurons", "-l", "3", "--neuron", "0,0"], ["contexts-sweep", "--units", ""],
        ["contexts-sweep", "--units", ","], ["superposition", "--sparsity", "0.5,0.5"],
        ["knowledge-neurons", "--prompt", "x", "--target", " Paris", "--layers", "3,3"],
        ["path", *IOI, "--positions", "-1,-1"], ["explain", "--feature", "2,2"], ["sae", "show", "--feature", "1,1"],
        ["transcoder", "train", "--out", str(t / "tc"), "--layers", "2,2"], ["circuit", *IOI, "--edges", "0"],
        ["circuit-sweep", "--edges", "0"], ["explain", "--feature", "2,3", "--explainer", " "],
        # seeds
        ["grok", "--seed", "-1"], ["sae", "train", "--out", str(t / "s"), "--seed", "-5"],
        ["lens", "x", "--seed", str(2**64)], ["superposition", "--seed", "-1"],
        # broken user files
        ["patch-sweep", "--pairs-file", str(t / "binary.jsonl")],
        ["circuit-sweep", "--pairs-file", str(t / "list.jsonl")],
        ["patch-sweep", "--pairs-file", str(t / "number.jsonl")],
        *[["sae", "eval", str(d), "--blocks", "1"] for d in saes.values()],
        ["sae", "steer", "x", "--sae", str(saes["cfg-garbage"]), "--latent", "0"],
        ["explain", "--feature", "2,3", str(saes["w-truncated"])],
        *[["lens", "x", "--tuned", str(p)] for p in lenses],
        ["transcoder", "eval", str(t / "tc-garbage")], ["graph", "x", "--transcoders", str(t / "tc-garbage")],
        # hooks an operation cannot use
        ["crosscoder", "--out", str(t / "cc"), "--edit-subject", "The Eiffel Tower", "--edit-target", " Rome",
         "--hook", "logits"],
        ["diff", "--edit-subject", "The Eiffel Tower", "--edit-target", " Rome", "--hook",
         "blocks.3.attn.hook_pattern"],
        # memory a setting needs, before allocating
        ["sae", "train", "--out", str(t / "big"), "--expansion", "99999999"],
        ["sae", "train", "--out", str(t / "big2"), "--tokens", "999999999999"],
        ["transcoder", "train", "--out", str(t / "big3"), "--expansion", "999999"],
        ["crosscoder", "--out", str(t / "big4"), "--edit-subject", "The Eiffel Tower", "--edit-target", " Rome",
         "--expansion", "99999999"],
        ["heads", "--detect", "induction", "--n", "99999999"], ["superposition", "--features", "999999999"],
        ["ccs", "--restarts", "5000"],
        # tokens beyond the model's context
        ["dola", "x", "--max-new-tokens", "99999999"], ["steer", "x", "--max-new-tokens", "100000"],
        ["edit", "--prompt", "{} is in", "--subject", "The Eiffel Tower", "--target", " Rome", "--gen-tokens",
         "99999"],
        # outputs of rerun and compare, before the work
        ["rerun", res, "--html", str(t / "a_dir")], ["rerun", res, "--result", str(t / "a_file" / "x")],
        ["compare", res, res, "--html", str(t / "a_dir")], ["compare", res, res, "--html", str(t / "no" / "x.html")],
        # finite but absurd: past a natural bound (a scale whose square overflows float32, a margin beyond float32's
        # log-probabilities, a repetition penalty past 10, noise the model's norms cannot carry)
        ["dola", "x", "--repetition-penalty", "1e30"], ["dola", "x", "--repetition-penalty", "11"],
        ["trace", "-p", "The Eiffel Tower is in", "-s", "The Eiffel Tower", "--noise", "1e30"],
        ["trace", "-p", "The Eiffel Tower is in", "-s", "The Eiffel Tower", "--noise", "1e20"],
        ["edit", "--prompt", "{} is in", "--subject", "The Eiffel Tower", "--target", " Rome", "--method", "kn",
         "--margin", "1e30"],
        ["steer", "x", "--scale", "1e30"], ["steer", "x", "--scale", "-1e19"], ["grok", "--init-scale", "1e30"],
        ["sae", "steer", "x", "--sae", str(t / "sae-good"), "--latent", "0", "--scale", "-1e30"],
        ["diff", "--edit-subject", "The Eiffel Tower", "--edit-target", " Rome", "--steer-scale", "1e30"],
        ["crosscoder", "--out", str(t / "cc2"), "--edit-subject", "The Eiffel Tower", "--edit-target", " Rome",
         "--steer-scale", "1e25"],
        # scale operations: hooks without a value per position, shards and batches that cannot fit
        ["contexts-sweep", "--hook", "blocks.0.attn.hook_pattern"],
        ["contexts-sweep", "--hook", "blocks.2.attn.hook_attn_scores"],
        ["harvest", "--hooks", "blocks.0.hook_resid_post,blocks.1.attn.hook_pattern", "--out", str(t / "hv1")],
        ["harvest", "--hooks", "logits", "--out", str(t / "hv2"), "--shard-blocks", "100000"],
        ["harvest", "--hooks", "blocks.3.attn.hook_result", "--out", str(t / "hv3"), "--shard-blocks", "999999"],
        ["contexts-sweep", "--hook", "logits", "--batch-size", "8192", "--shard-blocks", "8192", "--block-len", "1024"],
        ["contexts-sweep", "--hook", "logits", "--k", "99999999"],
        # a message that echoes a huge input stays one short line
        ["lens", "x", "--target", "x" * 600], ["dla", "x", "-a", "y" * 3000, "-w", " b"],
    ]


def generated():
    """Every numeric option of every command with a value that is not a number; floats also NaN and inf."""
    out = []
    for op in operations():
        base = op.name.split()
        for f in fields_of(op.config):
            inner, _ = _optional(f.type)
            if not f.spec.cli or f.spec.positional:
                continue
            if inner is int:
                out += [[*base, f.option, "abc"], [*base, f.option, "2.5"]]
            elif inner is float:
                out += [[*base, f.option, "abc"], [*base, f.option, "nan"], [*base, f.option, "-inf"]]
            elif get_origin(inner) is list and get_args(inner)[:1] in ((int,), (float,)):
                out += [[*base, f.option, "x,y"]]
    return out


def _check(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("uncover: loading")]
    last = err[-1] if err else ""
    ok = e.value.code == 2 and len(err) == 1 and last.startswith("uncover: error:") and \
        "unexpected failure" not in last and len(last) <= 420
    return None if ok else (argv if len(" ".join(argv)) < 300 else argv[:3], e.value.code, last[:300])


def test_every_bad_input_is_one_clear_line_before_any_work(real, files, monkeypatch, capsys):
    import dataclasses

    import uncover
    from uncover.ops import registry

    monkeypatch.setattr(common, "load_model", lambda name=None, device=None, dtype=None, **placement: (
        real if name is None and not any(placement.values())
        else uncover.load(name, device=device, dtype=dtype, **placement)))
    reached = []  # an operation that changes weights must never run here: the session's model is shared

    def guard(model, config, progress, name=None):
        reached.append(name)
        raise SystemExit(99)

    registry._load()
    for name, op in list(registry._REGISTRY.items()):
        if op.changes_weights:
            monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(
                op, run=lambda m, c, p, name=name: guard(m, c, p, name)))
    bad = [b for argv in cases(files) + generated() if (b := _check(argv, capsys)) is not None]
    assert not bad, "\n".join(map(repr, bad))
    assert not reached


def test_training_that_diverges_is_one_clear_line_and_no_finished_run(tmp_path, capsys):
    """A learning rate has no fixed bound: grok --lr 1e30 runs, the loss becomes NaN, and that is one exit-2 line
    naming the step, the lr and the fix (it used to finish with NaN weights and exit 0)."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["grok", "--p", "7", "--steps", "5", "--eval-every", "5", "--lr", "1e30", "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("uncover:")]
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("uncover: error: grok training diverged: the loss became NaN at step ")
    assert "(lr 1e+30); lower --lr" in err[0]
    assert not (out / "model.safetensors").exists()


def test_a_threshold_that_keeps_no_edge_is_one_clear_line(real, monkeypatch, capsys):
    """circuit --threshold past every |score| gave an empty circuit with exit 0; now one line naming the largest."""
    monkeypatch.setattr(common, "load_model", lambda name=None, device=None, dtype=None, **placement: real)
    with pytest.raises(SystemExit) as e:
        main(["circuit", *IOI, "--threshold", "1e30"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("uncover: error")]
    assert e.value.code == 2 and len(err) == 1, err
    assert "threshold (--threshold) 1e+30 keeps no edge: the largest |score| is" in err[0]
