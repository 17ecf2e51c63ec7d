"""The operations dla, patch, path, trace, attribute and circuit: configs, CLI parsing, result save/load.

Configs are checked without a model; results are built cheaply with the library functions on a
tiny model and token ids, then saved and loaded back bit-exactly. Checks that need the tokenizer
(one-token answers, equal token counts, receiver ranges) run on the embedded model (``e2e``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import tiny, tokens
from uncover.attribution.attribution_patching import AttributionResult, attribution_patching
from uncover.attribution.dla import direct_logit_attribution
from uncover.attribution.ops import AttributeConfig, DLAConfig
from uncover.circuits.circuit import Circuit
from uncover.circuits.eap import eap
from uncover.circuits.ops import CircuitConfig
from uncover.circuits.prompts import Prompts
from uncover.cli.generate import build_config
from uncover.core.config import fields_of
from uncover.core.errors import UncoverError, UsageError
from uncover.core.persist import load_result
from uncover.data.tasks import TASKS, task_pair
from uncover.hooks.metrics import METRICS
from uncover.ops.registry import get_operation
from uncover.patching.activation import HOOKS, PER, activation_patching
from uncover.patching.causal_tracing import KINDS, causal_trace
from uncover.patching.ops import PatchConfig, PathConfig, TraceConfig, check_positions
from uncover.patching.pair_config import PairConfig, choices_of
from uncover.patching.path import path_patching

PAIR = {"clean": "a b", "corrupt": "a c", "answer": " x", "wrong": " y"}


def test_operations_are_declared_with_examples():
    for name in ("dla", "patch", "path", "trace", "attribute", "circuit"):
        op = get_operation(name)
        assert op.example is not None and op.config(**op.example)  # the example is a valid config
        assert op.help and not op.changes_weights


def test_choices_match_the_library():
    f = {x.name: x for x in fields_of(PatchConfig)}
    assert choices_of(f["hook"].type) == HOOKS and choices_of(f["per"].type) == PER
    assert choices_of(f["metric"].type) == METRICS and choices_of(f["task"].type) == tuple(TASKS)
    t = {x.name: x for x in fields_of(TraceConfig)}
    assert choices_of(t["kind"].type) == (*KINDS, "all")


@pytest.mark.parametrize("cls, kw, words", [
    (PatchConfig, {}, "missing --clean, --corrupt, --answer, --wrong (or give --task)"),
    (PatchConfig, {"clean": "a b", "answer": " x"}, "missing --corrupt, --wrong (or give --task)"),
    (PatchConfig, {"task": "iio"}, "unknown task (--task) 'iio'; valid: ioi, facts, greater_than"),
    (PatchConfig, {**PAIR, "task": "ioi"}, "not both"),
    (PatchConfig, {**PAIR, "wrong": " x"}, "the same token"),
    (PatchConfig, {**PAIR, "answer": ""}, "--answer is empty"),
    (PatchConfig, {**PAIR, "clean": "  "}, "clean (--clean) is empty or whitespace"),
    (PatchConfig, {**PAIR, "hook": "q"}, "valid: resid_pre, attn_out, mlp_out, z"),
    (PatchConfig, {**PAIR, "hook": "z"}, "per (--per) 'pos' does not fit hook 'z'; valid: head, head_pos"),
    (PatchConfig, {**PAIR, "per": "head"}, "valid: pos"),
    (PatchConfig, {**PAIR, "metric": "kl"}, "valid: logit_diff, prob, logprob"),
    (PatchConfig, {**PAIR, "direction": "up"}, "valid: denoise, noise"),
    (AttributeConfig, {**PAIR, "compare": "yes"}, "compare (--compare) must be true or false"),
    (PathConfig, {"task": "facts"}, "valid: ioi, greater_than"),
    (PathConfig, {"task": "ioi", "pairs": 0}, "pairs (--pairs) must be >= 1"),
    (PathConfig, {**PAIR, "receivers": ["L23.q"]}, "L9H6.q"),
    (PathConfig, {**PAIR, "receivers": ["logits", "L1H0.q"]}, "'logits' goes alone"),
    (PathConfig, {**PAIR, "receivers": []}, "needs at least 1 item"),
    (PathConfig, {**PAIR, "receiver_positions": [1.5]}, "must be an integer"),
    (TraceConfig, {"task": "ioi"}, "valid: facts"),
    (TraceConfig, {"prompt": "The Eiffel Tower is in"}, "missing --prompt and --subject"),
    (TraceConfig, {"task": "facts", "prompt": "x"}, "not both"),
    (TraceConfig, {"prompt": "The Eiffel Tower is in", "subject": "Big Ben"}, "is not in the prompt"),
    (TraceConfig, {"task": "facts", "noise": 0.0}, "noise (--noise) must be > 0"),
    (TraceConfig, {"task": "facts", "noise": float("nan")}, "finite"),
    (TraceConfig, {"task": "facts", "samples": 0}, "samples (--samples) must be >= 1"),
    (TraceConfig, {"task": "facts", "window": -1}, "window (--window) must be >= 1"),
    (TraceConfig, {"task": "facts", "kind": "resid"}, "valid: hidden, mlp, attn, all"),
    (TraceConfig, {"task": "facts", "n": True}, "must be a number"),
    (DLAConfig, {"prompt": "", "answer": " a", "wrong": " b"}, "prompt is empty or whitespace"),
    (DLAConfig, {"prompt": "x", "answer": " a", "wrong": " a"}, "the same token"),
    (CircuitConfig, {"method": "ig"}, "valid: eap, eap-ig, acdc"),
    (CircuitConfig, {"task": "x"}, "valid: ioi, facts, greater_than"),
    (CircuitConfig, {"edges": 5, "threshold": 0.1}, "give --edges or --threshold, not both"),
    (CircuitConfig, {"metric": "kl"}, "'kl' needs --method acdc"),
    (CircuitConfig, {"clean": "a b", "corrupt": "a c"}, "missing --answer, --wrong (or leave all four out"),
    (CircuitConfig, {"tau": -0.1}, "tau (--tau) must be >= 0"),
    (CircuitConfig, {"threshold": float("inf")}, "finite"),
    (CircuitConfig, {"n_prompts": 0}, "n_prompts (--prompts) must be >= 1"),
    (CircuitConfig, {"steps": 0}, "steps (--steps) must be >= 1"),
    (CircuitConfig, {"ablation": "zero"}, "valid: corrupt, mean"),
    (CircuitConfig, {"save": "/no/such/folder/c.json"}, "does not exist"),
])
def test_configs_refuse_bad_values_with_one_line(cls, kw, words):
    with pytest.raises(UsageError) as e:
        cls(**kw)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and msg.startswith(cls.__name__), msg


def test_good_configs_and_defaults():
    assert PatchConfig(task="ioi").explicit is False
    assert PatchConfig(**PAIR).pair(None) == ("a b", "a c", " x", " y")
    c = CircuitConfig(**PAIR)  # an explicit pair overrides the default task
    assert c.explicit and c.task == "ioi"
    assert TraceConfig(task="facts").kind == "all"
    assert CircuitConfig(method="acdc", metric="kl").metric == "kl"


def test_task_pair_is_the_library_home_of_resolve_pair():
    assert task_pair(None, None, "a b", "a c", " x", " y") == ("a b", "a c", " x", " y")
    with pytest.raises(UncoverError, match=r"missing --corrupt, --wrong \(or give --task\)"):
        task_pair(None, None, "a b", None, " x", None)
    with pytest.raises(UncoverError, match="unknown task 'iio'; valid: ioi, facts, greater_than"):
        task_pair(None, "iio")


def test_cli_text_parses_into_configs():
    path = build_config(get_operation("path"), {**PAIR, "receivers": "L23H3.q, L23H0.q", "receiver_positions": "-1"})
    assert path.receivers == ["L23H3.q", "L23H0.q"] and path.receiver_positions == [-1]
    assert build_config(get_operation("path"), {"task": "ioi", "receivers": "logits"}).receivers == ["logits"]
    with pytest.raises(UsageError, match="--positions"):
        build_config(get_operation("path"), {"task": "ioi", "receiver_positions": "last"})
    c = build_config(get_operation("circuit"), {"n_prompts": 4, "edges": 50, "faithfulness": True})
    assert (c.n_prompts, c.edges, c.faithfulness, c.task) == (4, 50, True, "ioi")


def test_receiver_positions_are_checked_against_the_prompt():
    check_positions([-3, 2], 3)
    with pytest.raises(UsageError, match="valid: -3..2"):
        check_positions([-4], 3)


# ---- results: built on a tiny model, saved and loaded back ------------------------------------------
def _same(a, b) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y) and x.dtype == y.dtype, f.name
        elif dataclasses.is_dataclass(x):
            _same(x, y)
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), f.name
            for k in x:
                assert torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k], (f.name, k)
        else:
            assert x == y, f.name


def _pair():
    clean = tokens(batch=1, pos=7, seed=1)
    corrupt = clean.clone()
    corrupt[0, 3:] = tokens(batch=1, pos=4, seed=8)[0]
    return clean, corrupt


@pytest.fixture(scope="module")
def model():
    return tiny("llama-gqa")


def test_patch_and_attribute_results_round_trip(model, tmp_path):
    clean, corrupt = _pair()
    r = activation_patching(model, clean, corrupt, 5, 9, hook="z", per="head_pos")
    _same(r, load_result(r.save(tmp_path / "p.safetensors")))
    approx = attribution_patching(model, clean, corrupt, 5, 9)
    assert approx.exact is None and "Pearson" not in approx.summary()
    both = dataclasses.replace(approx, exact=activation_patching(model, clean, corrupt, 5, 9))
    back = load_result(both.save(tmp_path / "a.safetensors"))
    assert isinstance(back, AttributionResult) and isinstance(back.exact, type(both.exact))
    _same(both, back)
    assert "Pearson" in back.summary() and "exact" in back.to_frame().columns and back.plot().data
    with pytest.raises(UncoverError, match="--compare"):
        approx.comparison()


def test_dla_path_and_trace_results_round_trip(model, tmp_path):
    clean, corrupt = _pair()
    d = direct_logit_attribution(model, clean, 5, 9)
    _same(d, load_result(d.save(tmp_path / "d.safetensors")))
    p = path_patching(model, [clean[0]], [corrupt[0]], 5, 9, receivers=["L2H1.q"], receiver_positions=[-1])
    back = load_result(p.save(tmp_path / "p.safetensors"))
    assert torch.equal(back.grid.isnan(), p.grid.isnan())
    _same(dataclasses.replace(p, grid=p.grid.nan_to_num()), dataclasses.replace(back, grid=back.grid.nan_to_num()))
    t = causal_trace(model, clean, [1, 2], 5, kind="all", samples=2, window=2)
    _same(t, load_result(t.save(tmp_path / "t.safetensors")))


def test_circuit_round_trips_as_result_and_as_json(model, tmp_path):
    clean, corrupt = _pair()
    c = eap(model, Prompts.build(model, clean, corrupt, [5], [9])).top(10)
    c.meta["task"] = "custom"
    back = load_result(c.save(tmp_path / "c.safetensors"))
    assert isinstance(back, Circuit) and back.graph == c.graph and back.meta == c.meta
    assert torch.equal(back.scores, c.scores) and torch.equal(back.kept, c.kept)
    assert Circuit.load(tmp_path / "c.safetensors").edges() == c.edges()
    c.save(tmp_path / "c.json")  # a .json name keeps the JSON export
    assert (tmp_path / "c.json").read_text().startswith("{")
    assert Circuit.load(tmp_path / "c.json").edges() == c.edges()
    other = activation_patching(model, clean, corrupt, 5, 9).save(tmp_path / "x.safetensors")
    with pytest.raises(UncoverError, match="not a circuit"):
        Circuit.load(other)


# ---- checks that need the tokenizer: the embedded model ------------------------------------------------
@pytest.mark.e2e
def test_model_checks_before_any_work(real):
    ioi = "When Mary and John went to the store, John gave a drink to"
    good = {"clean": ioi, "corrupt": ioi.replace("John gave", "Mary gave"), "answer": " Mary", "wrong": " John"}
    PatchConfig(**good).check_model(real)
    for cls, kw, words in [
        (PatchConfig, {**good, "corrupt": "The big cat sat down"}, "equal lengths"),
        (AttributeConfig, {**good, "answer": " Parisian"}, "not one"),
        (PathConfig, {**good, "receivers": ["L30H0.q"]}, "layers 0..29"),
        (PathConfig, {**good, "receivers": ["L3H3.k"]}, "key-value heads 0..2"),
        (PathConfig, {**good, "receiver_positions": [14]}, "valid: -14..13"),
        (DLAConfig, {"prompt": "x", "answer": " Mary", "wrong": " Parisian"}, "not one"),
        (TraceConfig, {"prompt": "The Eiffel Tower is in", "subject": "The Eiffel", "answer": " Parisian"}, "not one"),
    ]:
        with pytest.raises(UncoverError, match=words):
            cls(**kw).check_model(real)
    assert PairConfig(task="facts").pair(real)[2:] == (" Paris", " Rome")
