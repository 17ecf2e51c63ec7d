"""Bad input through the Python API (issue 13, second round): typed errors that name the bad value and a fix,
the same ones the CLI prints, raised before any work."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import uncover as uc
from uncover.cli.main import one_line
from uncover.core.config import SEED_MAX
from uncover.core.errors import ModelNotFound, UncoverError, UnknownHookName, UsageError
from uncover.core.memory import check_fits, out_of_memory
from uncover.core.names import HookName
from uncover.core.userfiles import fields_from, load_tensors, parse_json, read_json, read_text, require_fields
from uncover.models.load import check_device


def test_user_files_are_named_with_what_is_wrong(tmp_path):
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(UsageError, match=r"pairs file .*b.jsonl is not UTF-8 text \(byte 128"):
        read_text(binary, "pairs file")
    (tmp_path / "nul.txt").write_text("a\x00b")
    with pytest.raises(UsageError, match="NUL bytes"):
        read_text(tmp_path / "nul.txt")
    with pytest.raises(UsageError, match="is a folder"):
        read_text(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(UsageError, match=r"cfg.json: not JSON \(line 1, column 3"):
        parse_json("{ x", "cfg.json")
    (tmp_path / "cfg.json").write_text("[1]")
    with pytest.raises(UsageError, match="must be a JSON object, not a list"):
        read_json(tmp_path / "cfg.json", obj=True)
    with pytest.raises(UsageError, match=r"missing field\(s\) b \(it has: a\)"):
        require_fields({"a": 1}, ["a", "b"], "x")
    with pytest.raises(UsageError, match="the field 'd_sae' is missing"), fields_from("cfg.json"):
        {"d_in": 1}["d_sae"]


@pytest.mark.parametrize("tensors, match", [
    ({"w": torch.ones(3, dtype=torch.int64)}, "not floating point"),
    ({"w": torch.tensor([1.0, math.nan])}, "NaN or infinite"),
    ({"w": torch.tensor([math.inf])}, "NaN or infinite"),
])
def test_weights_that_are_not_float_or_finite_are_refused(tmp_path, tensors, match):
    save_file(tensors, tmp_path / "w.safetensors")
    with pytest.raises(UsageError, match=match):
        load_tensors(tmp_path / "w.safetensors", "SAE weights")


def test_truncated_and_empty_safetensors_are_refused(tmp_path):
    save_file({"w": torch.ones(100)}, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    for name, content in (("half", data[: len(data) // 2]), ("empty", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UsageError, match="not a readable safetensors file .*truncated or damaged"):
            load_tensors(tmp_path / name)


@pytest.mark.parametrize("device", ["bogus", "cpu:x", "", "  ", "cpu:1", "cuda:99"])
def test_devices_this_machine_lacks_are_refused(device):
    with pytest.raises(UncoverError, match=r"device|CUDA"):
        check_device(device)


def test_an_empty_model_name_is_not_the_current_folder():
    with pytest.raises(ModelNotFound, match="empty"):
        uc.load("  ")


def test_hook_names_must_be_strings():
    for bad in (1, None, 2.5):
        with pytest.raises(UnknownHookName, match="a hook name is a string"):
            HookName.parse(bad)


def test_memory_is_checked_before_allocating():
    with pytest.raises(UsageError, match=r"needs at least .* GiB of memory, but this machine has .*; lower"):
        check_fits(2**60, "x", "lower it")
    check_fits(1, "x", "lower it")
    msg = out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 11199999888 "
                                     "bytes. Error code 12"))
    assert msg.startswith("out of memory: the run tried to allocate 10.4 GiB") and "lower" in msg
    assert out_of_memory(ValueError("x")) is None


def test_messages_stay_one_short_line():
    msg = one_line("'" + "x" * 5000 + "' is 1250 tokens " + str(["xxxx"] * 1250) + ", not one; try a shorter word")
    assert len(msg) <= 400 and "\n" not in msg and msg.endswith("not one; try a shorter word")


@pytest.mark.parametrize("op, fields, match", [
    ("superposition", {"seed": -1}, "seed .*must be >= 0"),
    ("superposition", {"seed": SEED_MAX + 1}, f"seed .*must be <= {SEED_MAX}"),
    ("superposition", {"sparsity": [0.5, 0.5]}, "lists 0.5 more than once"),
    ("superposition", {"features": 10**9, "dims": 2}, "needs at least"),
    ("neurons", {"layer": 3, "neuron": [1, 1]}, "lists 1 more than once"),
    ("contexts-sweep", {"units": []}, "at least 1 item"),
    ("circuit", {"edges": 0}, "edges .* must be >= 1"),
    ("circuit-sweep", {"edges": 0}, "edges .* must be >= 1"),
    ("ccs", {"restarts": 5000}, "restarts .* must be <= 1000"),
    ("prune", {"out": ""}, "empty path"),
    ("lens", {"prompt": "x", "tuned": " "}, "empty path"),
    ("explain", {"feature": [2, 3], "explainer": ""}, "empty or whitespace"),
])
def test_configs_refuse_values_that_mean_nothing(op, fields, match):
    with pytest.raises(UsageError, match=match):
        uc.get_operation(op).config(**fields)


def test_pairs_files_are_refused_when_the_config_is_built(tmp_path):
    for text, match in (('{"clean": 1, "corrupt": "b", "answer": " a", "wrong": " b"}', "must be non-empty text"),
                        ("[1, 2]", "must be a JSON object"), ('{"clean": "a"}', r"missing field\(s\) corrupt")):
        (tmp_path / "p.jsonl").write_text(text + "\n")
        with pytest.raises(UsageError, match=match):
            uc.get_operation("patch-sweep").config(pairs_file=tmp_path / "p.jsonl")


@pytest.mark.e2e
def test_api_calls_refuse_bad_values_like_the_cli(real):
    p = "The Eiffel Tower is in the city of"
    with pytest.raises(UsageError, match=r"unknown field 'promt'; did you mean: prompt"):
        uc.run("lens", real, promt=p)
    with pytest.raises(UsageError, match="needs a HookedModel"):
        uc.run("lens", "smollm", prompt=p)
    with pytest.raises(UsageError, match="seed must be an integer"):
        uc.run("lens", real, prompt=p, seed=-3)
    with pytest.raises(UsageError, match="k must be an integer in 1..49152"):
        uc.logit_lens(real, p, k=0)
    with pytest.raises(UsageError, match="same token"):
        uc.direct_logit_attribution(real, p, " Paris", " Paris")
    with pytest.raises(UncoverError, match="noise must be a finite number > 0"):
        uc.causal_trace(real, p, "The Eiffel Tower", noise=math.nan)
    with pytest.raises(UncoverError, match="positive prompt must be non-empty"):
        uc.actadd(real, " ", "Hate", layer=6)
    with pytest.raises(UncoverError, match="coeff must be a finite number"):
        uc.actadd(real, "Love", "Hate", layer=6, coeff=math.inf)
    with pytest.raises(UnknownHookName):
        real.run_with_cache(p, names=[1])
    for name, fields in (("dola", {"prompts": ["x"], "max_new_tokens": 10**8}),
                         ("heads", {"detect": "induction", "n": 10**8}),
                         ("sae train", {"out": Path("/no/such/run"), "hook": "blocks.2.hook_resid_post",
                                        "expansion": 10**8})):
        with pytest.raises(UsageError):
            cfg = uc.get_operation(name).config(**fields)
            cfg.check_model(real)
