"""Big models through accelerate: a model split between CPU memory and disk offload (or wholly offloaded by
``accelerate.cpu_offload``) behaves like the single-device model, bit for bit (logits, caches, patching,
interventions, weight edits and reverts, pruning).

On a CPU-only machine accelerate's ``device_map`` places modules on ``cpu`` (resident) or ``disk``
(offloaded: parameters on ``meta``, loaded from the model's safetensors file for each forward), which
is the hard case: per-head results, staged replay and decoding read weights outside a forward, and
edits must reach a value that is not in the module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import transformers as T

import uncover
from tests.conftest import tiny_hf, tokens
from uncover import HookedModel
from uncover.core.errors import UncoverError
from uncover.hooks import offload, weights
from uncover.hooks.interventions import Ablate, Add, Mean, Replace, Zero
from uncover.patching.activation import activation_patching
from uncover.pruning import magnitude_prune, wanda_prune
from uncover.pruning.structured import prune_structured

pytestmark = pytest.mark.usefixtures("one_thread_no_grad")


def _digest(d: Path) -> str:
    return hashlib.blake2b(b"".join(p.read_bytes() for p in sorted(d.glob("*.safetensors")))).hexdigest()


def _placements(kind: str, n_bytes: int) -> dict[str, dict]:
    layers = "transformer.h" if kind == "gpt2" else "model.layers"
    rest = ({"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu", "transformer.ln_f": "disk",
             "lm_head": "cpu"} if kind == "gpt2" else
            {"model.embed_tokens": "cpu", "model.norm": "disk", "model.rotary_emb": "cpu", "lm_head": "disk"})
    return {
        # accelerate's own split: what fits in half the model's size stays in memory, the rest goes to disk
        "auto": {"device_map": "auto", "max_memory": {"cpu": n_bytes // 2}},
        # a hand-written map: layers alternate between memory and disk
        "dict": {"device_map": {**rest, f"{layers}.0": "disk", f"{layers}.1": "cpu", f"{layers}.2": "disk"}},
    }


@pytest.fixture(scope="module", params=[("llama-gqa", "auto"), ("llama-gqa", "dict"), ("gpt2", "auto"),
                                        ("llama-gqa", "cpu_offload")], ids=lambda p: "-".join(p))
def pair(request, tmp_path_factory) -> tuple[HookedModel, HookedModel, Path]:
    """``(reference, split model, model directory)``: the same weights, one resident, one spread/offloaded."""
    kind, how = request.param
    d = tmp_path_factory.mktemp(f"{kind}-{how}")
    hf = tiny_hf(kind)
    hf.save_pretrained(d)
    n_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    ref = HookedModel(T.AutoModelForCausalLM.from_pretrained(d).eval(), None, name=kind)
    if how == "cpu_offload":  # accelerate's cpu_offload: every weight in a plain dict, loaded for each forward
        from accelerate import cpu_offload

        big_hf = cpu_offload(T.AutoModelForCausalLM.from_pretrained(d).eval(), execution_device=torch.device("cpu"))
    else:
        big_hf = T.AutoModelForCausalLM.from_pretrained(d, offload_folder=str(d / "offload"),
                                                        **_placements(kind, n_bytes)[how]).eval()
        assert "disk" in big_hf.hf_device_map.values(), big_hf.hf_device_map
    big = HookedModel(big_hf, None, name=kind)
    assert offload.is_offloaded(big.model)
    return ref, big, d


def test_logits_and_every_cached_value_are_identical(pair):
    ref, big, _ = pair
    ids = tokens(2, 8)
    assert isinstance(big.adapter, offload.OffloadedAdapter) and big.device == torch.device("cpu")
    assert torch.equal(ref(ids), big(ids))
    la, ca = ref.run_with_cache(ids)
    lb, cb = big.run_with_cache(ids)
    assert torch.equal(la, lb) and list(ca) == list(cb)
    for name in ca:  # every hook, patterns and lazily computed per-head results included
        assert torch.equal(ca[name], cb[name]), name
    for i in range(ref.cfg.n_layers):
        assert torch.equal(ca.head_results(i), cb.head_results(i))
    assert torch.equal(ca.decompose_resid().tensor, cb.decompose_resid().tensor)


def test_standard_form_weights_are_real_and_equal(pair):
    ref, big, _ = pair
    for name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"):
        a, b = getattr(ref, name)(2), getattr(big, name)(2)
        assert b.device.type != "meta" and torch.equal(a, b), name
    assert torch.equal(ref.W_U, big.W_U) and torch.equal(ref.W_E, big.W_E)
    w, _, _ = big.adapter.norm_params(big.adapter.final_norm())
    assert torch.equal(w, ref.adapter.norm_params(ref.adapter.final_norm())[0])


def test_interventions_and_patching_match(pair):
    ref, big, _ = pair
    ids = tokens(2, 8)
    _, src = ref.run_with_cache(tokens(2, 8, seed=5), names=["blocks.1.hook_attn_out"])
    d = ref.cfg.d_model
    ivs = [Add("blocks.1.hook_resid_pre", vector=torch.linspace(-1, 1, d), positions=[-1]),
           Replace("blocks.1.hook_attn_out", source=src["blocks.1.hook_attn_out"]),
           Zero("blocks.2.attn.hook_result", heads=[1]),  # per-head results read W_O after o_proj ran
           Mean("blocks.0.attn.hook_pattern", heads=[0]),
           Ablate("blocks.2.hook_resid_mid", direction=torch.ones(d))]
    with ref.intervene(ivs):
        a = ref(ids)
    with big.intervene(ivs):
        b = big(ids)
    assert torch.equal(a, b) and not torch.equal(a, ref(ids))
    for hook, per in (("resid_pre", "pos"), ("z", "head")):  # staged replay calls blocks and decodes directly
        pa = activation_patching(ref, ids[:1], ids[1:], 5, 9, hook=hook, per=per, normalise=False)
        pb = activation_patching(big, ids[:1], ids[1:], 5, 9, hook=hook, per=per, normalise=False)
        assert torch.equal(pa.grid, pb.grid)


def test_weight_edit_on_offloaded_and_resident_parameters_reverts_bit_exactly(pair):
    ref, big, d = pair
    files = _digest(d)
    ids = tokens(2, 8)
    clean = big(ids)
    offloaded = [k for k in weights.parameters(big) if weights.is_offloaded(big, k) and k.endswith(".weight")]
    resident = [k for k in weights.parameters(big) if not weights.is_offloaded(big, k)]
    g = torch.Generator().manual_seed(0)
    delta = {k: 0.05 * torch.randn(weights.parameters(big)[k].shape, generator=g)
             for k in (offloaded[0], offloaded[-1], *resident[:1])}  # cpu_offload leaves nothing resident
    before = {k: weights.read(big, k).clone() for k in delta}
    oa, ob = weights.apply_change(ref, delta), weights.apply_change(big, delta)
    assert torch.equal(ref(ids), big(ids)) and not torch.equal(big(ids), clean)
    assert torch.equal(weights.current(big, delta)[offloaded[0]], weights.current(ref, delta)[offloaded[0]])
    weights.restore(ref, oa)
    weights.restore(big, ob)
    assert torch.equal(big(ids), clean) and torch.equal(ref(ids), clean)
    assert all(torch.equal(weights.read(big, k), v) for k, v in before.items())
    assert _digest(d) == files  # the offloaded weights' files were never written


@pytest.mark.parametrize("method", ["magnitude", "wanda", "neurons"])
def test_pruning_an_offloaded_model_matches_and_reverts(pair, method):
    ref, big, _ = pair
    ids = tokens(2, 8)
    clean = big(ids)
    calib = tokens(4, 16, seed=3)

    def prune(m):
        if method == "magnitude":
            return magnitude_prune(m, 0.5)
        if method == "wanda":
            return wanda_prune(m, 0.5, tokens=calib)
        return prune_structured(m, "neurons", 0.25, scores=torch.rand(m.cfg.n_layers, m.cfg.d_mlp,
                                                                     generator=torch.Generator().manual_seed(1)))

    pa, pb = prune(ref), prune(big)
    assert pa.rows == pb.rows and pb.overall_sparsity() > 0.1
    assert torch.equal(ref(ids), big(ids))
    pa.revert()
    pb.revert()
    assert torch.equal(big(ids), clean)


def test_placement_options_are_checked():
    from uncover.models.load import _placement

    with pytest.raises(UncoverError, match="not both"):
        _placement("cpu", "auto", None, None)
    with pytest.raises(UncoverError, match="valid: auto, balanced"):
        _placement(None, "everywhere", None, None)
    with pytest.raises(UncoverError, match="need a device_map"):
        _placement(None, None, {"cpu": "1GB"}, None)
    assert _placement(None, "auto", {"cpu": "1GB"}, None) == {"device_map": "auto", "max_memory": {"cpu": "1GB"}}


@pytest.mark.e2e
def test_embedded_model_split_between_memory_and_disk(real, tmp_path):
    """``uncover.load(device_map=..., offload_folder=...)`` on the embedded model: the same logits and an
    edit of an offloaded layer reverted bit-exactly, with the cached model files untouched."""
    big = uncover.load(device_map="auto", max_memory={"cpu": "450MB"}, offload_folder=tmp_path)
    assert "disk" in big.device_map.values()
    prompt = "The Eiffel Tower is in the city of"
    clean = big(prompt)
    assert torch.equal(clean, real(prompt))
    assert big.to_str_tokens(clean[0, -1].argmax(-1).reshape(1))[0] == " Paris"
    path = "model.layers.29.mlp.down_proj.weight"
    assert weights.is_offloaded(big, path)
    entry = Path(weights.offload.locate(big.model, path)[0].weights_map.dataset.index[path]["safetensors_file"])
    files = _digest(entry.parent)
    old = weights.apply_change(big, {path: 0.1 * torch.ones(weights.parameters(big)[path].shape)})
    assert not torch.equal(big(prompt), clean)
    weights.restore(big, old)
    assert torch.equal(big(prompt), clean)
    assert _digest(entry.parent) == files


def test_editing_reads_the_down_projection_where_it_lives(pair):
    """ROME, MEMIT and knowledge-neuron edits read ``down_proj`` from the offloaded weights, not the empty stand-in."""
    from uncover.editing.base import down_proj

    ref, big, _ = pair
    for layer in range(ref.cfg.n_layers):
        w = down_proj(big, layer)
        assert w.device.type != "meta" and torch.equal(w, down_proj(ref, layer)), layer


def test_fingerprint_reads_offloaded_weights_and_sees_their_edits(pair):
    """Provenance's fingerprint hashes an offloaded weight's real value, so an edit to it is visible."""
    from uncover.ops.provenance import weights_fingerprint

    ref, big, _ = pair
    before = weights_fingerprint(big.model)
    key = next(k for k in weights.parameters(big) if weights.is_offloaded(big, k) and k.endswith(".weight"))
    old = weights.apply_change(big, {key: torch.full(weights.read(big, key).shape, 1e-3)})
    try:
        assert weights_fingerprint(big.model) != before
    finally:
        weights.restore(big, old)
    assert weights_fingerprint(big.model) == before
