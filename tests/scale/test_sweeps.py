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
    circuit_sweep,
    contexts_sweep,
    edit_sweep,
    generated_counterfacts,
    mean_scores,
    patching_sweep,
    perplexity_sweep,
)
from uncover.scale.sweep import shards_of, sweep

PAIRS = [
    PromptPair("big ben is in the city of", "the colosseum is in the city of", " london", " rome"),
    PromptPair("the colosseum is in the city of", "big ben is in the city of", " rome", " london"),
    PromptPair("the tower is in the city of", "big ben is in the city of", " paris", " london"),
    PromptPair("big ben is at the city of", "the tower is at the city of", " london", " paris"),
    PromptPair("the tower was in the city of", "the colosseum was in the city of", " paris", " rome"),
]
FACTS = [
    Counterfact(
        "big ben",
        "{} is in the city of",
        " london",
        " paris",
        ("where is big ben it is in the city of",),
        ("the tower is in the city of",),
    ),
    Counterfact(
        "the colosseum",
        "{} is in the city of",
        " rome",
        " london",
        ("the colosseum is at the city of",),
        ("big ben is in the city of",),
    ),
    Counterfact(
        "the tower",
        "{} is in the city of",
        " paris",
        " rome",
        ("the tower is at the city of",),
        ("the colosseum is in the city of",),
    ),
]


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
        assert perplexity_sweep(LocalEngine(tiny_model), tokens, shard_size=size).value == pytest.approx(ref, rel=1e-12)


def test_patching_sweep_equals_patching_each_pair(tiny_model, one_thread):
    from uncover.attribution.attribution_patching import attribution_patching
    from uncover.patching.activation import activation_patching

    for settings in (
        PatchSettings(),
        PatchSettings("resid_pre", "pos"),
        PatchSettings(method="attribution"),
        PatchSettings("mlp_out", "pos", direction="noise", method="attribution"),
    ):
        fn = attribution_patching if settings.method == "attribution" else activation_patching
        ref = torch.stack(
            [
                fn(
                    tiny_model,
                    p.clean,
                    p.corrupt,
                    p.answer,
                    p.wrong,
                    hook=settings.hook,
                    per=settings.per,
                    direction=settings.direction,
                ).grid
                for p in PAIRS
            ]
        )
        run = patching_sweep(LocalEngine(tiny_model), PAIRS, settings, shard_size=2)
        assert torch.equal(run.value, ref) and len(run.partials) == 3
    # the two methods really differ (attribution is a first-order estimate), so the test tells them apart
    act = patching_sweep(LocalEngine(tiny_model), PAIRS, PatchSettings(), shard_size=5).value
    attr = patching_sweep(LocalEngine(tiny_model), PAIRS, PatchSettings(method="attribution"), shard_size=5).value
    assert not torch.allclose(act, attr, atol=1e-3)
    with pytest.raises(UsageError, match="unknown patching method 'exact'; valid: activation, attribution"):
        PatchSettings(method="exact")
    with pytest.raises(UsageError, match="different shapes"):
        patching_sweep(
            LocalEngine(tiny_model),
            [*PAIRS[:1], PromptPair("big ben is in", "the tower is in", " the", " a")],
            PatchSettings("resid_pre", "pos"),
        )


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
        assert {k: v for k, v in a.items() if k not in ("logp_true", "logp_new")} == {
            k: v for k, v in b.items() if k not in ("logp_true", "logp_new")
        }
        assert a["logp_true"] == pytest.approx(b["logp_true"], abs=1e-5)
        assert a["logp_new"] == pytest.approx(b["logp_new"], abs=1e-5)
    assert got.scores() == ref.scores()


def test_generated_counterfacts_pair_each_fact_with_other_objects_of_its_kind():
    facts = generated_counterfacts()
    assert len(facts) == 191 and all(f.new != f.true for f in facts)
    cities = {f.true for f in facts if f.prompt == "{} is in the city of"}
    assert all(
        f.new in cities | {g.true for g in facts if g.prompt == "The capital city of {} is"}
        for f in facts
        if f.prompt == "{} is in the city of"
    )
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


#: pairs of two token lengths (7 and 8 words), so that the batches of one process and of the shards are padded
#: differently
MIXED = [*PAIRS, PromptPair("the tower is in the big city of", "big ben is in the big city of", " paris", " london")]


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_circuit_sweep_equals_eap_on_one_batch_of_all_pairs(tiny_model, one_thread, method):
    """The scores of the mean metric over all pairs: a shard-size-weighted mean of the shards' scores. Agreement is
    to float32 rounding, not bit for bit: the sums over prompts run in another order, and the padded batches have
    other shapes (so other kernel blockings)."""
    from uncover.circuits.eap import eap
    from uncover.circuits.prompts import Prompts

    ref = eap(
        tiny_model,
        Prompts.build(
            tiny_model,
            [p.clean for p in MIXED],
            [p.corrupt for p in MIXED],
            [p.answer for p in MIXED],
            [p.wrong for p in MIXED],
        ),
        method=method,
        steps=3,
    )
    tol = 1e-5 * float(ref.scores.abs().max())
    for size in (1, 4, 6):
        run = circuit_sweep(LocalEngine(tiny_model), tiny_model, MIXED, method=method, steps=3, shard_size=size)
        c = run.value
        assert (c.scores - ref.scores).abs().max() <= tol, size
        assert torch.equal(c.kept, ref.kept) and c.method == method and c.meta["prompts"] == 6
    # a plain mean of the shards' scores (ignoring their sizes 4 and 2) is far off: the weighting is tested
    parts = circuit_sweep(LocalEngine(tiny_model), tiny_model, MIXED, method=method, steps=3, shard_size=4).partials
    plain = mean_scores([(s, 1) for s, _ in parts])
    assert (plain - ref.scores).abs().max() > 100 * tol
    with pytest.raises(UsageError, match="valid: eap, eap-ig"):
        circuit_sweep(LocalEngine(tiny_model), tiny_model, MIXED, method="acdc")


def _blocks(n: int = 24, pos: int = 12) -> torch.Tensor:
    """Random token blocks whose first tokens differ (two equal prefixes would tie exactly in the top-k)."""
    g = torch.Generator().manual_seed(0)
    body = torch.randint(3, V, (n, pos), generator=g)
    body[:, 0] = torch.randperm(V - 3, generator=g)[:n] + 3
    return body


def test_contexts_sweep_equals_top_activations_over_all_blocks(tiny_model, one_thread):
    from uncover.hooks.harvest import hook_values
    from uncover.neurons.top import top_activations

    blocks, hook = _blocks(), "blocks.1.mlp.hook_post"
    ref = top_activations(tiny_model, hook, tokens=blocks, k=5, batch_size=4, window=(3, 1), sample=0)
    every = torch.cat(list(hook_values(tiny_model, blocks, hook, batch_size=4))).flatten(0, 1)  # [positions, units]
    for size in (4, 8, 24):  # whole batches: each activation computed in the same batch as in one process
        got = contexts_sweep(
            LocalEngine(tiny_model),
            tiny_model,
            hook,
            blocks,
            k=5,
            batch_size=4,
            window=(3, 1),
            shard_blocks=size,
            sample=16,
        ).value
        for f in ("values", "block", "pos", "windows", "density"):
            assert torch.equal(getattr(got, f), getattr(ref, f)), (size, f)
        assert torch.allclose(got.mean, ref.mean, rtol=1e-6) and got.units == ref.units and got.units[0] == "L1N0"
        # the sample: 16 rows of the activations at 16 distinct positions
        match = (got.sample[:, None, :] == every[None]).all(-1)
        assert got.sample.shape == (16, every.shape[1]) and bool(match.any(1).all())
    some = contexts_sweep(
        LocalEngine(tiny_model), tiny_model, hook, blocks, [3, 0, 7], k=2, batch_size=4, shard_blocks=8
    ).value
    assert torch.equal(some.values, ref.values[[3, 0, 7], :2]) and some.units == ["L1N3", "L1N0", "L1N7"]
    with pytest.raises(Exception, match=r"unit\(s\) \[99\] out of range"):
        contexts_sweep(LocalEngine(tiny_model), tiny_model, hook, blocks, [99], shard_blocks=8)


def test_merge_topk_keeps_the_earlier_position_among_ties():
    from uncover.hooks.streaming import StreamingTopK
    from uncover.scale.ops import merge_topk

    a, b = StreamingTopK(2, 1, (1, 0)), StreamingTopK(2, 1, (1, 0))
    a.update(torch.tensor([[[1.0], [3.0], [0.0]]]))
    b.update(torch.tensor([[[3.0], [3.0], [2.0]]]))
    b.index += 3
    m = merge_topk([b, a])  # shard order does not matter
    assert m.values[:, 0].tolist() == [3.0, 3.0] and m.index[:, 0].tolist() == [1, 3]
    assert m.windows[:, 0].tolist() == [[1.0, 3.0], [0.0, 3.0]] and m.count == 6 and m.rows == 2
