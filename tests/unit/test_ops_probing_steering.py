"""The ``probe``, ``ccs``, ``read`` and ``steer`` operations: configs refuse bad input naming the field, layer
selections resolve, dataset files fail with clear errors, and results save and load bit-exactly."""

from __future__ import annotations

import math

import pytest
import torch

from tests.unit.test_activations import word_model
from uncover.cli.generate import build_config
from uncover.core.errors import UncoverError, UsageError
from uncover.data.activations import ActivationSet
from uncover.data.labelled import check_dataset, from_file, load_labelled, load_pairs, pairs_from_file
from uncover.ops import load_result
from uncover.ops.registry import execute, get_operation
from uncover.probing import ccs_layers, probe_layers
from uncover.probing.layer_spec import check_layer_spec, resolve_layers
from uncover.probing.ops import CCSConfig, ProbeConfig
from uncover.steering import SteerResult, reading_vectors
from uncover.steering.ops import ReadConfig, SteerConfig


@pytest.fixture
def wm(one_thread_no_grad):
    return word_model("llama")


# ---- layer selections -------------------------------------------------------------------------
def test_layer_specs_resolve_like_python_slices():
    assert check_layer_spec("0, 4,8") == [0, 4, 8] and check_layer_spec("4:20:2") == "4:20:2"
    assert check_layer_spec(None) is None and check_layer_spec([2, 1]) == [2, 1]
    assert resolve_layers("4:20:2", 12) == [4, 6, 8, 10] and resolve_layers("-2:", 5) == [3, 4]
    assert resolve_layers(None, 3) == [0, 1, 2] and resolve_layers(None, 4, default="1:") == [1, 2, 3]
    assert resolve_layers("::3", 7) == [0, 3, 6]
    for bad, msg in (("4;8", "not integers"), ("1:2:3:4", "at most three"), ("::0", "step must not be zero"),
                     ("", "no layers"), ("-1", "negative"), ("3,3", "given twice")):
        with pytest.raises(UsageError, match=msg):
            check_layer_spec(bad)
    with pytest.raises(UsageError, match=r"layer\(s\) \[5\] out of range; this model has layers 0..2"):
        resolve_layers("0,5", 3)
    with pytest.raises(UsageError, match="selects no layer"):
        resolve_layers("10:", 3)


# ---- configs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, fields, msg", [
    (ProbeConfig, {"data": "turth"}, r"data \(--data\) 'turth'; valid: truth, sentiment"),
    (ProbeConfig, {"data": "no/such.csv"}, "no such file"),
    (ProbeConfig, {"layers": "4;8"}, r"layers \(--layers\) '4;8': not integers"),
    (ProbeConfig, {"layers": [1, -2]}, "negative"),
    (ProbeConfig, {"folds": 1}, r"folds \(--folds\) must be >= 2"),
    (ProbeConfig, {"kind": "svm"}, "kind"),
    (ProbeConfig, {"where": "first"}, "where"),
    (ProbeConfig, {"seed": -1}, "seed"),
    (CCSConfig, {"data": "sentiment"}, "no labels"),
    (CCSConfig, {"data": "honesty"}, "valid: truth, truth-pairs"),
    (CCSConfig, {"restarts": 0}, "restarts"),
    (ReadConfig, {"layers": "a:b"}, "not integers"),
    (ReadConfig, {"save": "/no/such/folder/v.safetensors"}, "does not exist"),
    (SteerConfig, {"prompts": []}, "at least 1"),
    (SteerConfig, {"prompts": ["  "]}, "empty"),
    (SteerConfig, {"prompts": ["Hi", ""]}, "empty"),
    (SteerConfig, {"prompts": ["Hi"], "max_new_tokens": 0}, r"max_new_tokens \(--max-new-tokens\) must be >= 1"),
    (SteerConfig, {"prompts": ["Hi"], "scale": math.nan}, "finite"),
    (SteerConfig, {"prompts": ["Hi"], "scale": math.inf}, "finite"),
    (SteerConfig, {"prompts": ["Hi"], "method": "add"}, "method"),
    (SteerConfig, {"prompts": ["Hi"], "positive": " "}, "positive"),
    (SteerConfig, {"prompts": ["Hi"], "pairs": "nope"}, r"pairs \(--pairs\)"),
    (SteerConfig, {"prompts": ["Hi"], "layer": -1}, "layer"),
    (SteerConfig, {"prompts": ["Hi"], "vector": "no/such.gguf"}, "does not exist"),
    (SteerConfig, {"prompts": ["Hi"], "save": "v.safetensors"}, "ActAdd and --vector make none"),
    (SteerConfig, {"prompts": ["Hi"], "method": "ablate", "vector": __file__}, "steers as CAA"),
])
def test_configs_refuse_bad_values_naming_the_field(cls, fields, msg):
    with pytest.raises(UsageError, match=msg):
        cls(**fields)


def test_config_defaults_and_normalised_layers():
    assert ProbeConfig(layers="0,4,8").layers == [0, 4, 8] and ProbeConfig(layers="4:20:2").layers == "4:20:2"
    assert CCSConfig().data == "truth-pairs" and ReadConfig().data == "honesty"
    assert SteerConfig(prompts=["Hi"], method="caa", save="v.gguf").save.name == "v.gguf"
    assert SteerConfig(prompts=["Hi"], scale=0.0).scale == 0.0  # a zero-strength control run is allowed


def test_layers_are_checked_against_the_model_and_read_skips_layer_0(wm):
    assert ProbeConfig().layer_list(wm) == [0, 1, 2]
    assert CCSConfig().layer_list(wm) == [0]  # every third layer
    assert ReadConfig().layer_list(wm) == [1, 2]  # layer 0's resid_pre cannot tell a pair apart
    with pytest.raises(UsageError, match=r"ProbeConfig: layers \(--layers\).*out of range; this model has layers 0..2"):
        ProbeConfig(layers="0,5").check_model(wm)
    with pytest.raises(UsageError, match="out of range"):
        SteerConfig(prompts=["the movie"], layer=3).check_model(wm)


def test_cli_text_becomes_the_config():
    cfg = build_config(get_operation("probe"), {"data": "sentiment", "layers": "4:20:2", "kind": "mlp"})
    assert (cfg.layers, cfg.kind) == ("4:20:2", "mlp")
    cfg = build_config(get_operation("read"), {"layers": "3,6"})
    assert cfg.layers == [3, 6]
    with pytest.raises(UsageError, match="max_new_tokens"):
        build_config(get_operation("steer"), {"prompts": ["Hi"], "max_new_tokens": 0})


def test_cli_refuses_before_loading_the_model(capsys):
    from uncover.cli.main import main

    for args, msg in ((["steer", "Hi", "-n", "0"], "max_new_tokens"), (["steer", "", "-n", "3"], "empty"),
                      (["steer", "Hi", "--scale", "nan"], "finite"), (["read", "--data", "x"], "valid: truth"),
                      (["ccs", "--data", "sentiment"], "no labels"), (["probe", "--layers", "1:x"], "not integers")):
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and "loading" not in err, (args, err)


# ---- datasets ---------------------------------------------------------------------------------
def test_dataset_registry(tmp_path):
    assert check_dataset("truth-pairs") == "truth-pairs"
    assert load_labelled("sentiment").label_names == ("negative", "positive")
    assert load_pairs("truth").labels is not None and load_pairs("sentiment").labels is None
    assert len(load_labelled("honesty")) == 2 * len(load_pairs("honesty"))
    (tmp_path / "d").mkdir()
    with pytest.raises(UsageError, match="valid: truth, sentiment, honesty, truth-pairs, or a CSV/JSONL file"):
        check_dataset(str(tmp_path / "d"))


def test_bad_dataset_files_give_clear_errors(tmp_path):
    def write(name: str, data: bytes):
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    with pytest.raises(UncoverError, match="not UTF-8 text"):
        pairs_from_file(write("bin.csv", bytes(range(256)) * 4))
    with pytest.raises(UncoverError, match="NUL bytes"):
        pairs_from_file(write("nul.csv", b"positive,negative\nyes\x00,no\n"))
    with pytest.raises(UncoverError, match=r"row 2: label 'maybe' is not 0 or 1"):
        pairs_from_file(write("lab.csv", b"positive,negative,label\na,b,1\nc,d,maybe\n"))
    assert pairs_from_file(write("ok.csv", b"positive,negative,label\na,b,1\nc,d,false\n")).labels == [1, 0]
    with pytest.raises(UncoverError, match="row 1 lacks negative"):
        pairs_from_file(write("short.csv", b"positive,negative\na\n"))
    with pytest.raises(UncoverError, match="row 1 has an empty text"):
        from_file(write("blank.csv", b"text,label\n  ,1\n"))
    with pytest.raises(UncoverError, match="label -1 is negative"):
        from_file(write("neg.csv", b"text,label\na,-1\nb,0\n"))
    with pytest.raises(UncoverError, match="must be a JSON object"):
        from_file(write("list.jsonl", b'["a", 1]\n'))


# ---- results round-trip -----------------------------------------------------------------------
def _acts(n: int, seed: int, shift: float = 0.0) -> ActivationSet:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    x[:, 0] += shift
    return ActivationSet({"blocks.1.hook_resid_pre": x, "blocks.2.hook_resid_pre": 2 * x}, [f"t{i}" for i in range(n)],
                         torch.arange(n) % 2)


def _same(a, b) -> None:
    assert type(a) is type(b)
    for k, v in vars(a).items():
        w = getattr(b, k)
        if isinstance(v, dict):
            assert v.keys() == w.keys()
            for key in v:
                assert torch.equal(v[key], w[key]) if isinstance(v[key], torch.Tensor) else v[key] == w[key]
        else:
            assert v == w or (isinstance(v, list) and str(v) == str(w)), k  # NaN-safe for lists of floats


def test_results_save_and_load_exactly(tmp_path):
    pos, neg = _acts(16, 0, 2.0), _acts(16, 1)
    results = [probe_layers(pos, folds=2, dataset="planted"),
               ccs_layers(pos, neg, [1, 0] * 8, restarts=2, steps=20),
               reading_vectors(pos, neg, dataset="planted"),
               SteerResult("actadd", [6], ["I think"], [" it is"], [" it was lovely"])]
    for i, r in enumerate(results):
        back = load_result(r.save(tmp_path / f"r{i}.safetensors"))
        _same(r, back)
        assert back.summary() == r.summary() and back.to_frame().equals(r.to_frame())


def test_reading_vectors_name_the_hook_where_pairs_look_alike():
    pos = _acts(8, 0)
    same = ActivationSet({"blocks.0.hook_resid_pre": pos["blocks.1.hook_resid_pre"]}, pos.texts)
    with pytest.raises(UncoverError, match="blocks.0.hook_resid_pre: .* same activations .* choose other layers"):
        reading_vectors(same, same)


def test_steer_runs_on_a_tiny_model_and_leaves_it_unchanged(wm, tmp_path):
    before = {k: v.clone() for k, v in wm.model.state_dict().items()}
    cfg = SteerConfig(prompts=["the movie was", "my day"], method="caa", pairs="sentiment", layer=1, scale=4.0,
                      max_new_tokens=3, save=str(tmp_path / "v.safetensors"))
    r = execute("steer", cfg, wm)
    assert isinstance(r, SteerResult) and len(r.steered) == 2 and r.layers == [1] and r.method == "caa"
    assert (tmp_path / "v.safetensors").exists()
    again = execute("steer", SteerConfig(prompts=["my day"], vector=str(tmp_path / "v.safetensors"),
                                         max_new_tokens=3), wm)
    assert again.method == "vector v.safetensors" and again.layers == [1]
    assert all(torch.equal(v, before[k]) for k, v in wm.model.state_dict().items())


def test_steer_kl_and_score_agree_with_a_reference_computed_by_hand(wm, tmp_path):
    """KL(unsteered || steered) on neutral text with a raw HF pre-hook adding coeff*diff at the first positions,
    and the sentiment lexicon recomputed on the continuations."""
    import torch.nn.functional as F

    from uncover.data.corpus import token_blocks
    from uncover.steering.methods import actadd
    from uncover.steering.sweep import lexicon_sentiment

    cfg = SteerConfig(prompts=["the movie was"], positive="good", negative="bad", layer=1, scale=4.0,
                      max_new_tokens=3, neutral_blocks=1)
    r = execute("steer", cfg, wm)
    st = actadd(wm, "good", "bad", layer=1, coeff=4.0)
    neutral = token_blocks(wm, block_len=r.neutral_tokens, split="heldout")[:1]
    layer = wm.model.model.layers[1]

    def add(module, args, kwargs):
        h = (args[0] if args else kwargs["hidden_states"]).clone()
        h[:, :st.diff.shape[0]] += st.coeff * st.diff.to(h.dtype)
        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

    with torch.no_grad():
        ref = wm.model(neutral).logits.float().log_softmax(-1)
        handle = layer.register_forward_pre_hook(add, with_kwargs=True)
        try:
            lp = wm.model(neutral).logits.float().log_softmax(-1)
        finally:
            handle.remove()
    want = F.kl_div(lp.flatten(0, 1), ref.flatten(0, 1), log_target=True, reduction="batchmean")
    assert r.kl is not None and r.kl > 1e-4 and math.isclose(r.kl, float(want), rel_tol=1e-4)
    assert r.score_plain == [lexicon_sentiment(t) for t in r.plain]
    assert r.score_steered == [lexicon_sentiment(t) for t in r.steered]
    assert execute("steer", SteerConfig(prompts=["my day"], positive="good", negative="bad", layer=1,
                                        max_new_tokens=1, neutral_blocks=0), wm).kl is None
    back = load_result(r.save(tmp_path / "s.safetensors"))
    assert back.kl == r.kl and back.score_steered == r.score_steered
