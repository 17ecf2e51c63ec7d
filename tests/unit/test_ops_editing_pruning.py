"""Operations ``edit``, ``prune`` and ``dola`` on tiny models: validation, CLI values, run, revert,
save and load. The atomicity of their weight writes (issue 13) is tested in ``test_weights.py``."""

from __future__ import annotations

import hashlib

import pytest
import torch

from tests.conftest import tiny, tokens
from tests.unit.test_editing import CFG, word_model
from uncover.cli.generate import build_config
from uncover.core.errors import UsageError
from uncover.editing import rome
from uncover.editing.evaluate import EditReport, prediction_rows
from uncover.ops import execute, get_operation, load_result
from uncover.ops.reproduce import differences
from uncover.pruning import PruningError, wanda_prune
from uncover.pruning.evaluate import PruneEval, PruneReport

CALIB = tokens(4, 16, seed=3)
EDIT, PRUNE, DOLA = (get_operation(n) for n in ("edit", "prune", "dola"))
FACT = {"prompt": "{} is in the city of", "subject": "big ben", "target": " rome"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


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
