"""Sweeps on the local engine: a map over shards plus a reduce equals the single-process evaluation."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import V
from uncover.core.errors import UsageError
from uncover.data.counterfact import Counterfact
from uncover.data.tasks import PromptPair
from uncover.scale.engines import LocalEngine
from uncover.scale.ops import (
    PatchSettings,
    RomeEdit,
    edit_sweep,
    generated_counterfacts,
    patching_sweep,
    perplexity_sweep,
)
from uncover.scale.sweep import shards_of, sweep

PAIRS = [PromptPair("big ben is in the city of", "the colosseum is in the city of", " london", " rome"),
         PromptPair("the colosseum is in the city of", "big ben is in the city of", " rome", " london"),
         PromptPair("the tower is in the city of", "big ben is in the city of", " paris", " london"),
         PromptPair("big ben is at the city of", "the tower is at the city of", " london", " paris"),
         PromptPair("the tower was in the city of", "the colosseum was in the city of", " paris", " rome")]
FACTS = [Counterfact("big ben", "{} is in the city of", " london", " paris", ("where is big ben it is in the city of",),
                     ("the tower is in the city of",)),
         Counterfact("the colosseum", "{} is in the city of", " rome", " london", ("the colosseum is at the city of",),
                     ("big ben is in the city of",)),
         Counterfact("the tower", "{} is in the city of", " paris", " rome", ("the tower is at the city of",),
                     ("the colosseum is in the city of",))]


def test_shards_and_a_generic_sweep_keep_order():
    assert shards_of(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    run = sweep(LocalEngine(None), lambda _, xs: max(xs), list(range(10)), list, shard_size=4)
    assert run.value == [3, 7, 9] and len(run.seconds) == 3 and run.engine["name"] == "local"
    with pytest.raises(UsageError, match="no items"):
        sweep(LocalEngine(None), max, [], list)
    with pytest.raises(UsageError, match="shard_size must be >= 1"):
        shards_of([1], 0)


def test_perplexity_sweep_equals_pruning_perplexity(tiny_model, one_thread):
    from uncover.pruning.evaluate import perplexity

    tokens = torch.randint(3, V, (7, 12), generator=torch.Generator().manual_seed(0))
    ref = perplexity(tiny_model, tokens)
    for size in (1, 3, 7):
        assert perplexity_sweep(LocalEngine(tiny_model), tokens, shard_size=size).value == pytest.approx(ref,
                                                                                                         rel=1e-12)


def test_patching_sweep_equals_patching_each_pair(tiny_model, one_thread):
    from uncover.patching.activation import activation_patching

    for settings in (PatchSettings(), PatchSettings("resid_pre", "pos")):
        ref = torch.stack([activation_patching(tiny_model, p.clean, p.corrupt, p.answer, p.wrong, hook=settings.hook,
                                               per=settings.per).grid for p in PAIRS])
        run = patching_sweep(LocalEngine(tiny_model), PAIRS, settings, shard_size=2)
        assert torch.equal(run.value, ref) and len(run.partials) == 3
    with pytest.raises(UsageError, match="different shapes"):
        patching_sweep(LocalEngine(tiny_model), [*PAIRS[:1], PromptPair("big ben is in", "the tower is in", " the",
                                                                       " a")], PatchSettings("resid_pre", "pos"))


def test_edit_sweep_equals_one_evaluation_of_every_fact(tiny_model, tmp_path, one_thread):
    from uncover.core.fingerprint import weights_fingerprint
    from uncover.editing.evaluate import evaluate_edits
    from uncover.editing.rome import RomeConfig

    before = weights_fingerprint(tiny_model.model)
    edit = RomeEdit(1, 256, str(tmp_path), RomeConfig(steps=4, prefixes=1, prefix_tokens=3))
    ref = evaluate_edits(tiny_model, edit, FACTS, gen_tokens=0, progress=False)
    run = edit_sweep(LocalEngine(tiny_model), FACTS, edit, shard_size=2)
    assert weights_fingerprint(tiny_model.model) == before
    got = run.value
    assert got.n_facts == 3 and len(got.rows) == len(ref.rows) and len(got.edit_seconds) == 3
    for a, b in zip(got.rows, ref.rows):
        assert {k: v for k, v in a.items() if k not in ("logp_true", "logp_new")} == \
            {k: v for k, v in b.items() if k not in ("logp_true", "logp_new")}
        assert a["logp_true"] == pytest.approx(b["logp_true"], abs=1e-5)
        assert a["logp_new"] == pytest.approx(b["logp_new"], abs=1e-5)
    assert got.scores() == ref.scores()


def test_generated_counterfacts_pair_each_fact_with_other_objects_of_its_kind():
    facts = generated_counterfacts()
    assert len(facts) == 191 and all(f.new != f.true for f in facts)
    cities = {f.true for f in facts if f.prompt == "{} is in the city of"}
    assert all(f.new in cities | {g.true for g in facts if g.prompt == "The capital city of {} is"}
               for f in facts if f.prompt == "{} is in the city of")
    assert generated_counterfacts(5, seed=1) == generated_counterfacts(5, seed=1) != generated_counterfacts(5)
    with pytest.raises(UsageError, match="n must be in"):
        generated_counterfacts(10**6)


def test_engines_refuse_what_they_cannot_run(tiny_model):
    from tests.conftest import tiny
    from uncover.scale.engines import ModelSpec, make_engine

    with pytest.raises(UsageError, match="built in memory, so Ray workers cannot load it"):
        ModelSpec.of(tiny("llama"))
    assert ModelSpec.of(tiny_model).source == str(tiny_model.source)
    with pytest.raises(UsageError, match="--ray-address needs --engine ray"):
        make_engine("local", tiny_model, address="auto")
    with pytest.raises(UsageError, match="unknown engine 'spark'; valid: local, ray"):
        make_engine("spark", tiny_model)
