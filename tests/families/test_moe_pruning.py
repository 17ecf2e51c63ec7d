"""Unstructured pruning reaches the experts of mixture-of-experts models, with per-expert calibration.

References are computed by hand from the fused expert parameters: which tokens the router sent to each
expert, those tokens' inputs to the expert's gate/up maps and hidden activations for its down map.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

from tests.families.kinds import family_model
from tests.families.moe_ref import expert_maps_by_hand, hidden_by_hand, route_by_hand
from uncover.pruning import Pruning, prune
from uncover.pruning.base import PruningError, row_mask
from uncover.pruning.sparsegpt import sparsegpt_weight
from uncover.pruning.structured import prune_structured
from uncover.pruning.wanda import wanda_score

MOE = ["mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _calib(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(seed))


def _state(m) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.model.state_dict().items()}


def _expert_sparsities(m) -> list[float]:
    out = []
    for layer in range(m.cfg.n_layers):
        for e in range(m.cfg.n_experts):
            out += [float((w == 0).float().mean()) for w in expert_maps_by_hand(m, layer, e).values()]
    return out


CASES = [(k, "magnitude") for k in MOE] + [(k, meth) for k in ("mixtral", "gpt_oss") for meth in ("wanda", "sparsegpt")]


@pytest.mark.parametrize("kind,method", CASES)
def test_pruning_reaches_every_expert_and_reverts_bit_exactly(kind, method):
    m = family_model(kind)
    snap = _state(m)
    toks = _calib()
    with torch.no_grad():
        before = m(toks)
    p = prune(m, method, 0.5, **({} if method == "magnitude" else {"tokens": toks}))
    sp = _expert_sparsities(m)  # read off the fused parameters, not the result's rows
    assert len(sp) == 3 * m.cfg.n_layers * m.cfg.n_experts and min(sp) == max(sp) == 0.5, (min(sp), max(sp))
    frame = p.to_frame()
    assert (frame.kind == "expert").sum() == len(sp) and "mlp.experts.0.gate_proj" in set(frame.module)
    with torch.no_grad():
        assert not torch.allclose(m(toks), before, atol=1e-4)
    path = p.save(f"{tempfile.mkdtemp()}/p.safetensors")
    p.revert()
    assert all(torch.equal(v, snap[k]) for k, v in m.model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(m(toks), before)
    again = Pruning.load(path, m)  # the saved record re-applies the expert weights too
    assert min(_expert_sparsities(m)) == 0.5
    again.revert()
    assert all(torch.equal(v, snap[k]) for k, v in m.model.state_dict().items())


@pytest.mark.parametrize("kind", ["mixtral", "gpt_oss"])
def test_wanda_and_sparsegpt_on_experts_use_only_the_tokens_routed_to_each(kind):
    """Layer 0's statistics come from the unpruned model: recompute, per expert, Wanda's mask and SparseGPT's
    update from the tokens the router sent there (float64, so no near-tie flips a mask)."""
    m = family_model(kind, dtype=torch.float64)
    toks = _calib(1)
    with torch.no_grad():
        _, cache = m.run_with_cache(toks, names=["blocks.0.ln2.hook_normalized", "blocks.0.mlp.hook_router"])
        x = cache["blocks.0.ln2.hook_normalized"].flatten(0, 1)  # [tokens, d_model]
        _, idx = route_by_hand(m, cache["blocks.0.mlp.hook_router"].flatten(0, 1))
        maps = [expert_maps_by_hand(m, 0, e) for e in range(m.cfg.n_experts)]
        inputs = []
        for e in range(m.cfg.n_experts):
            xe = x[(idx == e).any(-1)]
            assert 0 < len(xe) < len(x), "each expert should see some, not all, tokens"
            inputs.append({"gate_proj": xe, "up_proj": xe, "down_proj": hidden_by_hand(m, 0, e, xe)})
    p = prune(m, "wanda", 0.5, tokens=toks)
    for e in range(m.cfg.n_experts):
        got = expert_maps_by_hand(m, 0, e)
        for part, w in maps[e].items():
            norm = inputs[e][part].norm(dim=0)
            want = w.masked_fill(row_mask(wanda_score(w, norm), 0.5), 0.0)
            assert torch.equal(got[part], want), (e, part)
            # the same weights scored with all tokens' norms would prune differently
            if part == "down_proj":
                continue
            allnorm = x.norm(dim=0)
            assert not torch.equal(row_mask(wanda_score(w, allnorm), 0.5), row_mask(wanda_score(w, norm), 0.5))
    p.revert()
    p = prune(m, "sparsegpt", 0.5, tokens=toks)
    for e in range(m.cfg.n_experts):
        got = expert_maps_by_hand(m, 0, e)
        for part, w in maps[e].items():
            xe = inputs[e][part]
            torch.testing.assert_close(got[part], sparsegpt_weight(w, xe.T @ xe, 0.5), rtol=1e-9, atol=1e-12)
    p.revert()


def test_an_expert_no_token_reaches_is_pruned_by_magnitude_and_reported():
    m = family_model("gpt_oss")
    router = m.adapter.mlp(0).router
    with torch.no_grad():
        router.bias[3] -= 1e4  # expert 3 of layer 0 is never chosen
    try:
        before = expert_maps_by_hand(m, 0, 3)
        p = prune(m, "wanda", 0.5, tokens=_calib())
        assert p.options["uncalibrated_experts"] == ["0.3"]
        assert "1 experts got no calibration token" in p.summary()
        got = expert_maps_by_hand(m, 0, 3)
        for part, w in before.items():  # Wanda's score with equal input norms: magnitude per row
            assert torch.equal(got[part], w.masked_fill(row_mask(w.abs(), 0.5), 0.0)), part
        p.revert()
    finally:
        with torch.no_grad():
            router.bias[3] += 1e4


def test_structured_pruning_on_experts_heads_work_neurons_refuse():
    m = family_model("mixtral")
    snap = _state(m)
    with pytest.raises(PruningError, match="mixtral has a mixture-of-experts MLP .4 experts, top-2.: prune the"):
        prune_structured(m, "neurons", 0.25, scorer="activation", tokens=_calib())
    p = prune_structured(m, "heads", 0.25, scorer="activation", tokens=_calib())
    assert len(p.options["pruned"]) == m.cfg.n_layers  # one of 4 heads per layer
    p.revert()
    assert all(torch.equal(v, snap[k]) for k, v in m.model.state_dict().items())


def test_offloaded_experts_read_and_prune_as_resident_ones(tmp_path):
    """accelerate's cpu_offload keeps every weight off the module (``meta``): hook_expert_out and per-expert
    calibration load the experts module for their computation, and the pruned model equals the resident one."""
    import transformers as T
    from accelerate import cpu_offload

    from tests.conftest import tokens
    from tests.families.kinds import family_hf
    from uncover import HookedModel

    family_hf("gpt_oss").save_pretrained(tmp_path)

    def load():
        return T.AutoModelForCausalLM.from_pretrained(tmp_path, experts_implementation="eager").eval()

    ref = HookedModel(load(), None)
    big = HookedModel(cpu_offload(load(), execution_device=torch.device("cpu")), None)
    assert big.adapter.experts_module(1).gate_up_proj.device.type == "meta"
    ids, name = tokens(), "blocks.1.mlp.hook_expert_out"
    with torch.no_grad():
        clean = big(ids)
        read = [m.run_with_cache(ids, names=[name])[1][name] for m in (ref, big)]
        assert torch.equal(*read)
    pa, pb = prune(ref, "wanda", 0.5, tokens=_calib()), prune(big, "wanda", 0.5, tokens=_calib())
    assert pa.rows == pb.rows and pb.overall_sparsity() > 0.4
    with torch.no_grad():
        assert torch.equal(ref(ids), big(ids))
    pa.revert()
    pb.revert()
    with torch.no_grad():
        assert torch.equal(big(ids), clean)
