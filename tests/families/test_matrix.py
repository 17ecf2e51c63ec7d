"""The technique-by-family matrix: on every supported family (tiny random configs with realistic scales), every
operation runs or refuses with a clear message, and the per-technique identities hold.

Models are built once per family (module-scoped cache); each family costs about a second.
"""

from __future__ import annotations

import math
import tempfile

import pytest
import torch

import uncover as uc
from tests.families.facts import trained
from tests.families.kinds import ALL_KINDS, family_model, with_words
from tests.families.ops_cases import CASES, CLEAN, CORPUS_KINDS, CORPUS_OPS, CORRUPT, FACT, PAIR
from uncover.core.errors import UncoverError
from uncover.hooks.interventions import Add, Replace

POST_NORM = {"gemma2", "gemma3", "glm4", "olmo2"}
MOE = ("mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss")
LOGIT_SCALED = ("cohere", "cohere-qk", "granite")  # logits scaled by 1/16, 1/8: training and ROME take larger steps
#: refusals the matrix expects: (kind, operation) -> words the message must contain
REFUSED = {**{(k, "circuit"): "normalises the sum of the heads" for k in POST_NORM},
           ("gpt2", "prune"): "longer than the model's 64 positions",
           **{(k, "knowledge-neurons"): f"{k} has a mixture-of-experts MLP" for k in MOE},
           **{(k, op): f"{k} has a mixture-of-experts MLP" for k in MOE for op in ("neurons", "edit")}}

_MODELS: dict[tuple[str, bool], object] = {}


def model_of(kind: str, facts: bool = False):
    """The realistic-scale tiny model of ``kind`` (``facts``: trained to store :data:`FACTS`), built once."""
    key = (kind, facts)
    if key not in _MODELS:
        lr = 4e-2 if kind in LOGIT_SCALED else 1e-2
        _MODELS[key] = trained(kind, steps=20, lr=lr) if facts else with_words(family_model(kind))
    return _MODELS[key]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    _MODELS.clear()


def _state(m) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.model.state_dict().items()}


def _same(m, snap) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in m.model.state_dict().items())


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_operation_runs_or_refuses_clearly(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # operations that write (tuned lens, SAE run) write here
    monkeypatch.setenv("UNCOVER_CACHE", str(tmp_path / "cache"))
    m = model_of(kind)
    snap = _state(m)
    for name, fields in CASES.items():
        if name in CORPUS_OPS and kind not in CORPUS_KINDS:
            continue
        op = uc.get_operation(name)
        want = REFUSED.get((kind, name))
        try:
            r = uc.run(name, m, **fields)
        except UncoverError as e:
            msg = str(e)
            assert want is not None, f"{kind}: {name} refused unexpectedly: {msg}"
            assert want in msg and "\n" not in msg, (kind, name, msg)
            continue
        assert want is None, f"{kind}: {name} ran, but it should refuse ({want})"
        assert isinstance(r, op.result), (kind, name, type(r))
        assert r.summary() and len(r.to_frame()) > 0, (kind, name)
        if op.changes_weights:  # the pruned model is the operation's product: put the weights back
            assert not _same(m, snap), f"{kind}: {name} changed no weight"
            m.model.load_state_dict(snap)
        assert _same(m, snap), f"{kind}: {name} left the weights changed"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_dla_sums_to_the_logit_difference(kind):
    m = model_of(kind)
    r = uc.direct_logit_attribution(m, CLEAN, " john", " mary")
    torch.testing.assert_close(r.contributions.sum(0), r.logit_diff, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        logits = m(CLEAN)[0, -1]
    ids = [m.to_single_token(t) for t in (" john", " mary")]
    real = logits[ids[0]] - logits[ids[1]]
    cap = m.adapter.final_softcap
    if cap:  # the components explain the pre-cap difference; the result also gives the post-cap one
        assert r.softcap == cap and "pre-cap" in r.summary()
        torch.testing.assert_close(r.capped_diff[0], real, rtol=1e-4, atol=1e-4)
        with tempfile.TemporaryDirectory() as d:  # the new fields survive a save/load round trip
            back = uc.load_result(r.save(f"{d}/dla.safetensors"))
        assert back.softcap == r.softcap and torch.equal(back.capped_diff, r.capped_diff)
    else:
        torch.testing.assert_close(r.logit_diff[0], real, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_patching_every_position_restores_the_clean_run(kind):
    m = model_of(kind)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(m.cfg.n_layers)]
    with torch.no_grad():
        clean, cache = m.run_with_cache(CLEAN, names=names)
        corrupt = m(CORRUPT)
        assert not torch.allclose(clean, corrupt, atol=1e-3)
        for name in names:
            with m.intervene([Replace(name, source=cache[name])]):
                torch.testing.assert_close(m(CORRUPT), clean, rtol=1e-5, atol=1e-5)
    # the library's grid: at layer 0 the only differing token carries the whole difference (recovery 1)
    r = uc.activation_patching(m, CLEAN, CORRUPT, " john", " mary", hook="resid_pre")
    assert abs(float(r.grid[0, r.first_diff]) - 1.0) < 1e-4


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_causal_tracing_corruption_lowers_the_metric(kind):
    from uncover.patching.causal_tracing import causal_trace, embed_multiplier, noise_scale

    m = model_of(kind, facts=True)  # a random model's output hardly depends on its input: trace a stored fact
    scale = embed_multiplier(m)
    if kind.startswith("gemma"):  # the noise is measured where it is added: Gemma's embeddings are √d larger
        assert abs(scale - math.sqrt(m.cfg.d_model)) < 1e-3
    elif kind == "granite":  # and Granite's are multiplied by embedding_multiplier outside the module
        assert abs(scale - 12.0) < 1e-4
    elif kind == "bloom":  # Bloom's hook_embed is the embedding LayerNorm's output: unit scale, not W_E's 0.02
        assert scale > 5
    else:
        assert scale == 1.0, scale
    assert abs(noise_scale(m) - 3 * float(m.W_E.std()) * scale) < 1e-6
    # 20σ: Adam grew the rows of the few trained words far above the matrix's std, which the untrained rest sets
    r = causal_trace(m, "big ben", "big ben", " london", kind="hidden", samples=4, noise=20.0)
    assert r.drop > 0 and not r.warning, (kind, r.summary())
    weak = causal_trace(m, "big ben", "big ben", " london", kind="hidden", samples=2, noise=1e-3)
    assert weak.warning and weak.summary().startswith("WARNING: the corruption barely moves p(answer)")
    n = m.cfg.n_layers  # restoring the final residual at the last token gives back the clean probability
    assert abs(float(r.grids["hidden"][n - 1, -1]) - r.drop) < 1e-5


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_steering_and_pruning_revert_bit_exactly(kind):
    from uncover.pruning import prune

    m = model_of(kind)
    snap = _state(m)
    with torch.no_grad():
        before = m(FACT)
        with m.intervene([Add("blocks.1.hook_resid_pre", vector=torch.ones(m.cfg.d_model), scale=3.0)]):
            steered = m(FACT)
        assert not torch.allclose(steered, before) and torch.equal(m(FACT), before)
    p = prune(m, "magnitude", 0.5)
    assert p.overall_sparsity() > 0.4 and not _same(m, snap)
    p.revert()
    assert _same(m, snap)
    with torch.no_grad():
        assert torch.equal(m(FACT), before)


EDIT_KINDS = ALL_KINDS


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_rome_and_memit_move_a_stored_fact_and_revert(kind):
    from uncover.editing import RomeConfig, rome
    from uncover.editing.evaluate import object_logprobs
    from uncover.editing.memit import memit

    scaled = kind in LOGIT_SCALED  # a logit scale of 1/16 needs a 16x larger value change
    cfg = RomeConfig(steps=16 if scaled else 8, lr=2.0 if scaled else 0.1, prefixes=0, clamp=20.0,
                     weight_decay=0.0)  # scaled for d_model 32
    if kind in MOE:  # the edits assume one MLP per block: they refuse in one line naming the family
        m = model_of(kind)
        for edit in (lambda: rome(m, "{}", "big ben", " rome", layer=1, config=cfg, progress=False),
                     lambda: rome(m, "{}", "big ben", " rome", config=cfg, progress=False),
                     lambda: memit(m, [("{}", "big ben", " rome")], layers=[0, 1], config=cfg, progress=False)):
            with pytest.raises(UncoverError, match=f"{kind} has a mixture-of-experts MLP"):
                edit()
        return
    m = model_of(kind, facts=True)
    snap = _state(m)

    def gap() -> float:
        with torch.no_grad():
            lp = object_logprobs(m, ["big ben"], [" london", " rome"])[0]
        return float(lp[1] - lp[0])

    base = gap()
    assert base < -1, f"{kind}: the trained model does not store the fact ({base:.2f})"
    cache = tempfile.mkdtemp()
    e = rome(m, "{}", "big ben", " rome", layer=1, mom2_samples=128, cache=cache, config=cfg, progress=False)
    moved = gap()
    e.revert()
    assert _same(m, snap)
    assert moved > base + 0.3, f"{kind}: ROME moved log p(rome) − log p(london) only {base:.2f} → {moved:.2f}"
    if kind in POST_NORM or kind in ("llama", "gpt2", "gpt_neox", "phi3", "opt", "granite"):
        e = memit(m, [("{}", "big ben", " rome")], layers=[0, 1], mom2_samples=128, cache=cache, config=cfg,
                  progress=False)
        moved = gap()
        e.revert()
        assert _same(m, snap)
        assert moved > base + 0.3, f"{kind}: MEMIT moved the gap only {base:.2f} → {moved:.2f}"


WRITE_KINDS = ["opt", "granite", "bloom", "olmo2", "cohere", "mixtral", "qwen2_moe", "gpt_oss", "gpt2", "falcon"]


@pytest.mark.parametrize("kind", WRITE_KINDS)
def test_writing_every_component_gives_back_the_clean_run(kind):
    """Writes go through each site's insert (Granite's multipliers, OPT's flattened MLP, Bloom's dense outputs,
    MoE experts): replacing the embedding and every attention and MLP output (MoE: every expert's weighted
    output) with the clean run's values turns the corrupted run into the clean one."""
    m = model_of(kind)
    n = m.cfg.n_layers
    mlp = "mlp.hook_expert_out" if m.cfg.n_experts else "hook_mlp_out"
    names = ["hook_embed"] + [f"blocks.{i}.{p}" for i in range(n) for p in ("hook_attn_out", mlp)]
    names += [f"blocks.{i}.mlp.hook_shared_expert" for i in range(n) if m.adapter.family.shared_expert]
    names += [f"blocks.{i}.mlp.hook_shared_gate" for i in range(n) if m.adapter.family.shared_expert]
    with torch.no_grad():
        clean, cache = m.run_with_cache(CLEAN, names=names)
        assert not torch.allclose(m(CORRUPT), clean, atol=1e-3)
        with m.intervene([Replace(name, source=cache[name]) for name in names]):
            torch.testing.assert_close(m(CORRUPT), clean, rtol=1e-4, atol=1e-4)
        if not m.cfg.parallel_attn_mlp:  # resid_mid too (Granite: written back through the multiplier)
            mid, out = f"blocks.{n - 1}.hook_resid_mid", f"blocks.{n - 1}.hook_mlp_out"
            _, ref = m.run_with_cache(CLEAN, names=[mid, out])
            with m.intervene([Replace(mid, source=ref[mid])]):  # the last MLP then reads the clean stream
                _, got = m.run_with_cache(CORRUPT, names=[out])
            torch.testing.assert_close(got[out], ref[out], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["bloom"])
def test_acdc_and_faithfulness_replay_batches(kind):
    """ACDC and faithfulness replay blocks on tiled batches: Bloom's ALiBi bias must be tiled too."""
    r = uc.run("circuit", model_of(kind), **PAIR, edges=5, method="acdc", candidates=20, faithfulness=True)
    assert "faithfulness" in r.summary()
