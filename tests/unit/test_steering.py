"""Steering methods change exactly what they should, and leave the model bit-identical."""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_activations import word_model
from uncover.core.errors import UncoverError
from uncover.steering import (
    CAA,
    ITI,
    ActAdd,
    Control,
    DirectionalAblation,
    SteeringVector,
    generate,
    lat_direction,
    mean_direction,
    reading_vectors,
    steering,
)
from uncover.steering.methods import actadd, caa

PROMPTS = ["i think that the movie was", "my day"]


@pytest.fixture
def wm(one_thread_no_grad):
    return word_model("llama-gqa")


def resid(model, steer=None, lens=None, names=None):
    names = names or [f"blocks.{la}.hook_resid_pre" for la in range(model.cfg.n_layers)]
    with steering(model, steer, lens is not None):
        _, cache = model.run_with_cache(PROMPTS, names)
    return {n: cache[n] for n in names}


def snapshot(model):
    return {k: v.clone() for k, v in model.model.state_dict().items()}


def test_actadd_adds_only_at_first_positions_of_its_layer(wm):
    diff = torch.randn(3, wm.cfg.d_model)
    steer = ActAdd(diff, layer=1, coeff=2.0)
    base, st = resid(wm), resid(wm, steer)
    assert torch.equal(base["blocks.0.hook_resid_pre"], st["blocks.0.hook_resid_pre"])
    d = st["blocks.1.hook_resid_pre"] - base["blocks.1.hook_resid_pre"]
    torch.testing.assert_close(d[0, :3], 2.0 * diff)
    torch.testing.assert_close(d[1, :2], 2.0 * diff[:2])  # the second prompt has 2 tokens
    assert torch.all(d[0, 3:] == 0) and torch.all(d[1, 2:] == 0)
    assert not torch.equal(base["blocks.2.hook_resid_pre"], st["blocks.2.hook_resid_pre"])


def test_actadd_from_prompts_is_their_residual_difference(wm):
    steer = actadd(wm, "love", "hate", layer=2, coeff=1.0)
    _, cache = wm.run_with_cache(["love", "hate"], ["blocks.2.hook_resid_pre"])
    v = cache["blocks.2.hook_resid_pre"]
    torch.testing.assert_close(steer.diff, v[0] - v[1])


def test_caa_steers_from_the_last_prompt_token_on(wm):
    vec = SteeringVector({1: torch.randn(wm.cfg.d_model)})
    lens = wm.tokenize(PROMPTS).lengths
    base, st = resid(wm), resid(wm, CAA(vec, 3.0), lens)
    d = st["blocks.1.hook_resid_pre"] - base["blocks.1.hook_resid_pre"]
    n0 = int(lens[0])
    assert torch.all(d[0, : n0 - 1] == 0)
    torch.testing.assert_close(d[0, n0 - 1], 3.0 * vec.vectors[1])
    everywhere = resid(wm, CAA(vec, 3.0))["blocks.1.hook_resid_pre"] - base["blocks.1.hook_resid_pre"]
    torch.testing.assert_close(everywhere[0], (3.0 * vec.vectors[1]).expand(everywhere.shape[1], -1))


def test_caa_from_pairs_is_the_mean_difference(wm):
    pos, neg = ["the movie was good", "a great day"], ["the movie was bad", "a awful day"]
    steer = caa(wm, pos, neg, [2])
    h = "blocks.2.hook_resid_pre"
    naive = sum(wm.run_with_cache(p, [h])[1][h][0, -1] - wm.run_with_cache(n, [h])[1][h][0, -1]
                for p, n in zip(pos, neg)) / 2  # one prompt at a time: no padding
    torch.testing.assert_close(steer.vector.vectors[2], naive)


@pytest.mark.parametrize("op", ["linear", "piecewise", "projection"])
def test_control_operators_equal_their_formulas(wm, op):
    r = torch.randn(wm.cfg.d_model)
    base = resid(wm, names=["blocks.2.hook_resid_pre"])["blocks.2.hook_resid_pre"]
    got = resid(wm, Control(SteeringVector({2: r}), op, 0.7), names=["blocks.2.hook_resid_pre"])
    got = got["blocks.2.hook_resid_pre"]
    u = r / r.norm()
    want = {"linear": base + 0.7 * r, "piecewise": base + 0.7 * torch.sign(base @ u)[..., None] * r,
            "projection": base - (base @ u)[..., None] * u}[op]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_directional_ablation_leaves_no_component_anywhere(one_thread_no_grad, kind):
    m = word_model(kind)
    u = torch.randn(m.cfg.d_model)
    u /= u.norm()
    names = [f"blocks.{la}.{p}" for la in range(m.cfg.n_layers) for p in ("hook_resid_pre", "hook_resid_mid",
                                                                             "hook_resid_post")]
    base = resid(m, names=names)
    st = resid(m, DirectionalAblation(u), names=names)
    for n in names:
        assert float((st[n] @ u).abs().max()) < 1e-5, n
        assert float((base[n] @ u).abs().max()) > 1e-2  # there was a component to remove


def test_iti_shifts_only_the_chosen_heads(wm):
    shift = torch.zeros(wm.cfg.n_heads, wm.cfg.d_head)
    shift[2] = torch.randn(wm.cfg.d_head)
    steer = ITI({1: shift}, alpha=2.0)
    base = resid(wm, names=["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"]
    got = resid(wm, steer, names=["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"]
    d = got - base
    torch.testing.assert_close(d[:, :, 2], (2.0 * shift[2]).expand_as(d[:, :, 2]))
    assert torch.all(d[:, :, [0, 1, 3]] == 0)


def test_model_is_bit_identical_after_steering_even_on_error(wm):
    before, logits = snapshot(wm), wm(PROMPTS)
    vec = SteeringVector({0: torch.randn(wm.cfg.d_model) * 10})
    steered = generate(wm, PROMPTS, CAA(vec, 5.0), max_new_tokens=4)
    plain = generate(wm, PROMPTS, None, max_new_tokens=4)
    assert len(steered) == 2 and steered != plain
    with pytest.raises(RuntimeError, match="boom"), steering(wm, DirectionalAblation(torch.randn(wm.cfg.d_model))):
        raise RuntimeError("boom")
    assert torch.equal(wm(PROMPTS), logits)
    after = snapshot(wm)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert generate(wm, PROMPTS, None, max_new_tokens=4) == plain


def test_reading_directions_equal_naive_computations():
    g = torch.Generator().manual_seed(0)
    diffs = torch.randn(40, 6, generator=g) + torch.tensor([3.0, 0, 0, 1.0, 0, 0])
    m = diffs.mean(0)
    torch.testing.assert_close(mean_direction(diffs), m / m.norm())
    # LAT: top eigenvector (float64 eigh) of the covariance of the same sign-flipped differences
    v = lat_direction(diffs, seed=5)
    flip = torch.where(torch.rand(40, generator=torch.Generator().manual_seed(5)) < 0.5, -1.0, 1.0)
    flip[0], flip[1] = 1.0, -1.0
    x = (diffs * flip[:, None]).double()
    x = x - x.mean(0)
    w = torch.linalg.eigh(x.T @ x).eigenvectors[:, -1]
    w = w if float((diffs.double() @ w).mean()) > 0 else -w
    torch.testing.assert_close(v.double(), w, atol=1e-5, rtol=1e-5)


def test_reading_vectors_recover_a_planted_direction():
    from uncover.data.activations import ActivationSet

    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0)
    base = torch.randn(60, 8, generator=g)
    h = "blocks.4.hook_resid_pre"
    r = reading_vectors(ActivationSet({h: base + u}, [""] * 60), ActivationSet({h: base - u}, [""] * 60))
    assert r.accuracy["pca"][0] == 1.0 and r.accuracy["mean"][0] == 1.0
    assert float(r.directions["mean"][0] @ u) > 0.99
    assert r.vector("mean").layers == [4]


def test_vector_files_round_trip(tmp_path):
    import gguf

    v = SteeringVector({0: torch.randn(32), 2: torch.randn(32)}, "hook_resid_post", "tiny-llama", {"method": "caa"})
    back = SteeringVector.load(v.save(tmp_path / "v.safetensors"))
    assert back.point == v.point and back.meta == {"method": "caa"}
    assert all(torch.equal(back.vectors[k], v.vectors[k]) for k in v.vectors)
    v.to_gguf(tmp_path / "v.gguf")
    r = gguf.GGUFReader(str(tmp_path / "v.gguf"))
    field = r.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == "controlvector"
    count = r.fields["controlvector.layer_count"]
    assert int(count.parts[count.data[0]][0]) == 2
    assert sorted(t.name for t in r.tensors) == ["direction.1", "direction.3"]  # llama.cpp counts from 1
    g = SteeringVector.load(tmp_path / "v.gguf")
    assert g.point == "hook_resid_post" and all(torch.equal(g.vectors[k], v.vectors[k]) for k in v.vectors)


def test_bad_vectors_and_layers_are_refused(wm):
    with pytest.raises(UncoverError, match="NaN"):
        SteeringVector({0: torch.tensor([float("nan"), 1.0])})
    with pytest.raises(UncoverError, match="zero"):
        SteeringVector({0: torch.zeros(4)})
    with pytest.raises(UncoverError, match="out of range"):
        with steering(wm, CAA(SteeringVector({7: torch.ones(wm.cfg.d_model)}))):
            pass
    with pytest.raises(UncoverError, match="out of range"):
        ActAdd(torch.ones(1, wm.cfg.d_model), layer=9).interventions(wm)
    with pytest.raises(UncoverError, match="zero"):
        DirectionalAblation(torch.zeros(wm.cfg.d_model))
    with pytest.raises(UncoverError, match="valid: linear, piecewise, projection"):
        Control(SteeringVector({0: torch.ones(4)}), "rotate")
