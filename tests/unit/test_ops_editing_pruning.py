"""Operations ``edit``, ``prune`` and ``dola`` on tiny models, and the weight-change mechanism they share.

Issue 13: Ctrl-C or any exception inside the loops of ROME, MEMIT, a KN edit or any pruning method
leaves every parameter bit-identical to before (compared by a hash of every parameter).
"""

from __future__ import annotations

import hashlib
import signal

import pytest
import torch

from tests.conftest import tiny, tokens
from tests.unit.test_editing import CFG, word_model
from uncover.cli.generate import build_config
from uncover.core.errors import UsageError
from uncover.editing import kn_edit, memit, rome
from uncover.editing.evaluate import EditReport, prediction_rows
from uncover.hooks import weights
from uncover.ops import execute, get_operation, load_result
from uncover.ops.reproduce import differences
from uncover.pruning import Pruning, PruningError, magnitude_prune, sparsegpt_prune, wanda_prune
from uncover.pruning.evaluate import PruneEval, PruneReport
from uncover.pruning.structured import prune_structured

CALIB = tokens(4, 16, seed=3)
EDIT, PRUNE, DOLA = (get_operation(n) for n in ("edit", "prune", "dola"))
FACT = {"prompt": "{} is in the city of", "subject": "big ben", "target": " rome"}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def digest(m) -> dict[str, str]:
    """A hash of every parameter (and buffer): bytes, shape and dtype."""
    out = {}
    for k, v in list(m.model.named_parameters()) + list(m.model.named_buffers()):
        t = v.detach().cpu().contiguous()
        out[k] = hashlib.sha256(t.view(torch.uint8).numpy().tobytes() + str((t.shape, t.dtype)).encode()).hexdigest()
    return out


# ---- configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [
    ({"method": "rank"}, "valid: rome, memit, kn"),
    ({"prompt": "the tower is in"}, "not in the prompt"),
    ({"prompt": "{} and {}"}, "exactly one"),
    ({"subject": "  "}, "subject (--subject) is empty"),
    ({"target": " "}, "no tokens"),
    ({"layer": -1}, "layer (--layer) must be >= 0"),
    ({"margin": 1.0}, "--method kn"),
    ({"method": "kn", "margin": float("nan")}, "finite"),
    ({"method": "kn", "margin": 0}, "must be > 0"),
    ({"mom2_samples": 0}, "mom2_samples (--mom2-samples)"),
    ({"gen_tokens": -1}, "gen_tokens (--gen-tokens)"),
    ({"check": [""]}, "check (--check) is empty"),
    ({"save": "/no/such/folder/edit"}, "does not exist"),
])
def test_edit_config_refuses(bad, words):
    with pytest.raises(UsageError) as e:
        EDIT.config(**{**FACT, **bad})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_edit_config_checks_against_the_model():
    m = word_model()
    with pytest.raises(UsageError, match="out of range"):
        execute(EDIT, EDIT.config(**FACT, layer=3), m)
    with pytest.raises(UsageError, match="no tokenizer"):
        execute(EDIT, EDIT.config(**FACT), tiny("llama"))


@pytest.mark.parametrize("bad, words", [
    ({"method": "obs"}, "valid: magnitude, wanda, sparsegpt"),
    ({"sparsity": 1.5}, "[0, 1)"),
    ({"sparsity": -0.1}, "[0, 1)"),
    ({"sparsity": float("inf")}, "finite"),
    ({"pattern": "2:2"}, "valid: 2:4, 4:8"),
    ({"pattern": " "}, "empty"),
    ({"pattern": "2:4", "sparsity": 0.3}, "disagrees"),
    ({"structured": "layers"}, "valid: heads, neurons"),
    ({"structured": "heads", "method": "wanda"}, "without --method"),
    ({"structured": "heads", "sparsity": 1.0}, "[0, 1)"),
    ({"scorer": "random"}, "valid: activation, attribution"),
    ({"n_samples": 0}, "n_samples (--calib) must be >= 1"),
    ({"eval_blocks": -1}, "eval_blocks (--eval-blocks)"),
])
def test_prune_config_refuses(bad, words):
    with pytest.raises(UsageError) as e:
        PRUNE.config(**bad)
    assert words in str(e.value)


@pytest.mark.parametrize("bad, words", [
    ({"prompts": []}, "at least 1"),
    ({"prompts": [" "]}, "empty"),
    ({"layers": "middle"}, "valid: low, high"),
    ({"alpha": 0}, "alpha (--alpha) must be > 0"),
    ({"alpha": 1.5}, "must be <= 1"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
])
def test_dola_config_refuses(bad, words):
    with pytest.raises(UsageError) as e:
        DOLA.config(**{"prompts": ["The capital of France is"], **bad})
    assert words in str(e.value)


def test_dola_layers_checked_against_the_model():
    with pytest.raises(UsageError, match="layers"):
        DOLA.config(prompts=["x"], layers="1,7").check_model(tiny("llama"))
    DOLA.config(prompts=["x"], layers="1,2").check_model(tiny("llama"))


def test_cli_values_become_configs():
    c = build_config(EDIT, {**FACT, "check": ["the tower is in the city of"], "margin": 2.0, "method": "kn"})
    assert c.check == ["the tower is in the city of"] and c.request().text == "big ben is in the city of"
    p = build_config(PRUNE, {"n_samples": 4, "pattern": "2:4"})
    assert p.n_samples == 4 and p.target is None and p.method is None
    d = build_config(DOLA, {"prompts": ["a", "b"], "layers": "16,18"})
    assert d.prompts == ["a", "b"] and d.layers == "16,18"


# ---- the operations on tiny models -----------------------------------------------------------------
def test_edit_operation_reverts_saves_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("UNCOVER_CACHE", str(tmp_path / "cache"))
    m = word_model()
    before = digest(m)
    r = execute(EDIT, EDIT.config(**FACT, layer=1, mom2_samples=256, gen_tokens=0, check=["the tower is in"],
                                  save=tmp_path / "edit"), m)
    assert EDIT.changes_weights and digest(m) != before
    assert [row["stage"] for row in r.rows] == ["before", "after", "before", "after"]
    assert (tmp_path / "edit" / "delta.safetensors").is_file() and r.saved == str(tmp_path / "edit")
    back = load_result(r.save(tmp_path / "r.safetensors"))
    assert differences(back, r)[0] == [] and back.edit.model is None and back.edit.originals == {}
    assert back.cli_text() == r.cli_text()
    with pytest.raises(Exception, match="apply_to"):
        back.edit.revert()
    r.revert()
    assert digest(m) == before
    again = back.edit.apply_to(m)  # the saved deltas put the same edit on the model again
    assert digest(m) != before and torch.equal(next(iter(again.deltas.values())), next(iter(r.edit.deltas.values())))
    again.revert()
    assert digest(m) == before


def test_edit_operation_reverts_when_what_follows_the_edit_fails(tmp_path, monkeypatch):
    import uncover.editing.ops as ops

    monkeypatch.setenv("UNCOVER_CACHE", str(tmp_path))
    m = word_model()
    before = digest(m)
    calls = []

    def after_fails(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the "after" rows, once the weights are edited
            raise KeyboardInterrupt
        return prediction_rows(*a, **k)

    monkeypatch.setattr(ops, "prediction_rows", after_fails)
    with pytest.raises(KeyboardInterrupt):
        execute(EDIT, EDIT.config(**FACT, layer=2, mom2_samples=256, gen_tokens=0), m)
    assert len(calls) == 2 and digest(m) == before


def test_prune_operation_on_a_tiny_model(tmp_path):
    m = tiny("llama")
    before = digest(m)
    r = execute(PRUNE, PRUNE.config(method="magnitude", sparsity=0.25, eval_blocks=0, out=tmp_path / "pruned"), m)
    assert abs(r.pruning.overall_sparsity() - 0.25) < 0.01 and r.evaluation is None
    assert any((tmp_path / "pruned").glob("*.safetensors"))
    back = load_result(r.save(tmp_path / "r.safetensors"))
    assert differences(back, r)[0] == [] and back.pruning.model is None
    assert back.to_dict()["sparsity"] == r.to_dict()["sparsity"]
    r.revert()
    assert digest(m) == before
    r.revert()  # idempotent
    assert digest(m) == before


def test_prune_report_round_trip_with_evaluation(tmp_path):
    m = tiny("gpt2")
    p = wanda_prune(m, 0.5, tokens=CALIB)
    ev = PruneEval([{"label": "dense", "method": None, "pattern": None, "target": 0.0, "sparsity": 0.0,
                     "perplexity": 60.0, "fact_accuracy": 0.5}])
    r = PruneReport(p, ev, None)
    back = load_result(r.save(tmp_path / "r.safetensors"))
    assert differences(back, r)[0] == [] and back.summary() == r.summary()
    with pytest.raises(PruningError, match="Pruning.load"):
        back.pruning.revert()
    p.revert()


def test_edit_report_round_trip_keeps_the_deltas(tmp_path):
    m = word_model()
    e = rome(m, FACT["prompt"], FACT["subject"], FACT["target"], layer=1, mom2_samples=256, cache=tmp_path,
             config=CFG, progress=False)
    rows = prediction_rows(m, ["big ben is in the city of"], " rome", "after", 0)
    back = load_result(EditReport(e, rows, None).save(tmp_path / "r.safetensors"))
    key = next(iter(e.deltas))
    assert torch.equal(back.edit.deltas[key], e.deltas[key]) and back.edit.deltas[key].dtype == e.deltas[key].dtype
    assert back.edit.is_applied and back.edit.to_frame()["rank"].tolist() == [1]
    e.revert()


# ---- atomic weight writes (issue 13) -----------------------------------------------------------------
class Injected(Exception):
    pass


EXCEPTIONS = [Injected, KeyboardInterrupt]


def raise_once_weights_changed(m, exc, snap):
    """A forward pre-hook that raises ``exc`` at the first forward after any parameter changed."""

    def hook(mod, args, kwargs=None):
        if digest(m) != snap:
            handle.remove()
            raise exc("injected")

    handle = m.model.register_forward_pre_hook(hook)
    return handle


@pytest.mark.parametrize("exc", EXCEPTIONS)
def test_rome_interrupted_in_its_optimisation_loop_or_its_write(exc, tmp_path, monkeypatch):
    import importlib

    rm = importlib.import_module("uncover.editing.rome")  # the package's ``rome`` is the function
    m = word_model()
    snap = digest(m)
    real = rm.optimise_delta

    def loop_fails(*a, **k):
        n = [0]

        def hook(mod, args):
            n[0] += 1
            if n[0] == 3:
                raise exc("injected")

        h = m.model.register_forward_pre_hook(hook)
        try:
            return real(*a, **k)
        finally:
            h.remove()

    monkeypatch.setattr(rm, "optimise_delta", loop_fails)
    with pytest.raises(exc):
        rome(m, **FACT, layer=1, mom2_samples=256, cache=tmp_path, config=CFG, progress=False)
    assert digest(m) == snap
    monkeypatch.setattr(rm, "optimise_delta", real)
    write = weights._write

    def write_then_fail(*a):
        write(*a)
        raise exc("injected")

    monkeypatch.setattr(weights, "_write", write_then_fail)
    with pytest.raises(exc):  # the write itself is interrupted after the new values are in
        rome(m, **FACT, layer=1, mom2_samples=256, cache=tmp_path, config=CFG, progress=False)
    assert digest(m) == snap


@pytest.mark.parametrize("exc", EXCEPTIONS)
def test_memit_interrupted_between_its_layers(exc, tmp_path):
    m = word_model()
    snap = digest(m)
    reqs = [tuple(FACT.values()), ("{} is in the city of", "the colosseum", " london")]
    h = raise_once_weights_changed(m, exc, snap)  # fires in layer 1's keys, after layer 0's update
    with pytest.raises(exc):
        memit(m, reqs, layers=[0, 1], mom2_samples=256, cache=tmp_path, config=CFG, progress=False)
    h.remove()
    assert digest(m) == snap


@pytest.mark.parametrize("exc", EXCEPTIONS)
def test_kn_edit_interrupted_in_its_search(exc):
    m = word_model()
    snap = digest(m)
    h = raise_once_weights_changed(m, exc, snap)  # fires while a trial λ is applied
    with pytest.raises(exc):
        kn_edit(m, **FACT, steps=4, threshold=0.1, layers=[0, 1, 2], contrast=None)
    h.remove()
    assert digest(m) == snap


@pytest.mark.parametrize("exc", EXCEPTIONS)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibrated_pruning_interrupted_between_blocks(exc, method):
    m = tiny("llama")
    snap = digest(m)
    fired = []

    def hook(mod, args, kwargs):
        if digest(m) != snap and not fired:
            fired.append(1)
            raise exc("injected")

    h = m.adapter.block(2).register_forward_pre_hook(hook, with_kwargs=True)  # blocks 0 and 1 are pruned by then
    fn = wanda_prune if method == "wanda" else sparsegpt_prune
    with pytest.raises(exc):
        fn(m, 0.5, tokens=CALIB)
    h.remove()
    assert fired and digest(m) == snap


@pytest.mark.parametrize("exc", EXCEPTIONS)
def test_magnitude_pruning_interrupted_half_way(exc, monkeypatch):
    import uncover.pruning.magnitude as mg

    m = tiny("gpt2")
    snap = digest(m)
    real, calls = mg.magnitude_weight, []

    def fails(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise exc("injected")
        return real(*a, **k)

    monkeypatch.setattr(mg, "magnitude_weight", fails)
    with pytest.raises(exc):
        magnitude_prune(m, 0.5)
    assert len(calls) == 5 and digest(m) == snap


@pytest.mark.parametrize("exc", EXCEPTIONS)
@pytest.mark.parametrize("unit", ["heads", "neurons"])
def test_structured_pruning_interrupted_half_way(exc, unit, monkeypatch):
    import uncover.pruning.structured as st

    m = tiny("llama-gqa")  # biases too
    snap = digest(m)
    real, calls = st._rows, []

    def fails(mod):
        calls.append(1)
        if len(calls) == 3:
            raise exc("injected")
        return real(mod)

    monkeypatch.setattr(st, "_rows", fails)
    scores = torch.rand(m.cfg.n_layers, m.cfg.n_heads if unit == "heads" else m.cfg.d_mlp)
    with pytest.raises(exc):
        prune_structured(m, unit, 0.5, scores=scores)
    assert len(calls) == 3 and digest(m) == snap


# ---- the shared mechanism ---------------------------------------------------------------------------
class _Late:
    """A tensor stand-in whose conversion fails (the write of a later parameter)."""

    def __init__(self, shape, exc):
        self.shape, self.exc = shape, exc

    def to(self, *a, **k):
        raise self.exc("late")


@pytest.mark.parametrize("exc", EXCEPTIONS)
@pytest.mark.parametrize("mode", ["add", "set"])
def test_apply_change_is_all_or_nothing(exc, mode):
    m = tiny("llama")
    snap = digest(m)
    a, b = "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"
    shape = dict(m.model.named_parameters())[b].shape
    with pytest.raises(exc):
        weights.apply_change(m, {a: torch.ones(shape), b: _Late(shape, exc)}, mode)
    assert digest(m) == snap
    with pytest.raises(weights.WeightError, match="another model"):
        weights.apply_change(m, {a: torch.ones(3, 3)}, mode)
    with pytest.raises(weights.WeightError, match="lacks"):
        weights.apply_change(m, {"model.nope.weight": torch.ones(3)}, mode)
    assert digest(m) == snap


def test_change_saves_loads_and_reverts_bit_exactly(tmp_path):
    m = tiny("gpt2")
    snap = digest(m)
    key = "transformer.h.0.mlp.c_proj.weight"
    delta = torch.randn(dict(m.model.named_parameters())[key].shape)
    path = weights.save_change(tmp_path / "d.safetensors", {key: delta}, "add", {"note": "x"})
    tensors, mode, meta = weights.load_change(path)
    assert mode == "add" and meta == {"note": "x"} and torch.equal(tensors[key], delta)
    originals = weights.apply_change(m, tensors, mode)
    assert digest(m) != snap
    weights.restore(m, originals)
    assert digest(m) == snap
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(weights.WeightError, match="not a readable"):
        weights.load_change(tmp_path / "bad.safetensors")
    with pytest.raises(weights.WeightError, match="valid: add, set"):
        weights.save_change(tmp_path / "x.safetensors", {}, "mul")  # type: ignore[arg-type]


def test_pruning_file_reapplies_all_or_nothing(tmp_path):
    m = tiny("llama")
    p = magnitude_prune(m, 0.5)
    path = p.save(tmp_path / "p.safetensors")
    p.revert()
    snap = digest(m)
    other = tiny("gpt2")
    with pytest.raises(PruningError, match="another model"):
        Pruning.load(path, other)
    q = Pruning.load(path, m)
    assert digest(m) != snap
    q.revert()
    assert digest(m) == snap


def test_ctrl_c_is_held_off_until_a_restore_is_done():
    m = tiny("llama")
    snap = digest(m)
    originals = weights.snapshot(m)
    with torch.no_grad():
        for p in m.model.parameters():
            p.zero_()
    seen = []
    with pytest.raises(KeyboardInterrupt):
        with weights.interrupts_deferred():
            signal.raise_signal(signal.SIGINT)  # arrives during the block: the block still completes
            seen.append("went on")
            weights.restore(m, originals)
    assert seen == ["went on"] and digest(m) == snap


def test_choices_are_the_library_ones():
    from typing import get_args

    from uncover.core.config import _optional, fields_of
    from uncover.editing import METHODS as EDIT_METHODS
    from uncover.pruning import METHODS as PRUNE_METHODS
    from uncover.pruning.structured import SCORERS, UNITS

    def choices(cfg, name):
        return get_args(_optional(next(f.type for f in fields_of(cfg) if f.name == name))[0])

    assert choices(EDIT.config, "method") == EDIT_METHODS
    assert choices(PRUNE.config, "method") == PRUNE_METHODS
    assert choices(PRUNE.config, "structured") == UNITS
    assert choices(PRUNE.config, "scorer") == tuple(SCORERS)
