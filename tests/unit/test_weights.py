"""The weight-change mechanism shared by editing and pruning (``uncover.hooks.weights``), and issue 13:
Ctrl-C or any exception inside the loops of ROME, MEMIT, a KN edit or any pruning method leaves every
parameter bit-identical to before (compared by a hash of every parameter)."""

from __future__ import annotations

import signal

import pytest
import torch

from tests.conftest import tiny
from tests.unit.test_editing import CFG, word_model
from tests.unit.test_ops_editing_pruning import CALIB, FACT, digest
from uncover.editing import kn_edit, memit, rome
from uncover.hooks import weights
from uncover.pruning import Pruning, PruningError, magnitude_prune, sparsegpt_prune, wanda_prune
from uncover.pruning.structured import prune_structured

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


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
