"""bfloat16 and float16 models: the parity identities hold to the dtype's tolerance, and the statistics
that need precision (ROME/MEMIT key moments, SparseGPT's Hessian, Wanda's column norms) accumulate in
float32 or float64, so a half-precision model gives the statistic of its own activations to float32
accuracy, and one close to the float32 model's.

Tolerances are stated in units of the dtype's machine epsilon (``torch.finfo(dtype).eps``: 2⁻⁷ for
bfloat16, 2⁻¹⁰ for float16) times the size of the values compared.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import KINDS, tiny, tokens
from uncover import HookedModel
from uncover.editing.stats import key_moments
from uncover.pruning.calibrate import sequential

HALF = [torch.bfloat16, torch.float16]
pytestmark = pytest.mark.usefixtures("one_thread_no_grad")


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _close(a: torch.Tensor, b: torch.Tensor, ulps: float, dtype: torch.dtype) -> None:
    """``|a - b| <= ulps · eps(dtype) · max|b|`` (an error relative to the scale of the values)."""
    a, b = a.double(), b.double()
    bound = ulps * _eps(dtype) * float(b.abs().max().clamp_min(1e-30))
    err = float((a - b).abs().max())
    assert err <= bound, f"max error {err:.3g} > {bound:.3g} ({ulps} × eps({dtype}) × max|b|)"


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", KINDS)
def test_hooks_change_nothing_in_half_precision(kind, dtype):
    """Reading every hook, patterns included, leaves a half-precision forward bit-identical."""
    m = tiny(kind, dtype=dtype)
    toks = tokens()
    plain = m.model(toks).logits
    assert plain.dtype == dtype
    with m.hooks([(n, lambda v, hp: v) for n in m.hook_names()]):
        assert torch.equal(m(toks), plain)
    logits, cache = m.run_with_cache(toks)
    assert torch.equal(logits, plain) and len(cache) == len(m.hook_names())


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", KINDS)
def test_residual_identities_hold_to_the_dtype_tolerance(kind, dtype):
    m = tiny(kind, dtype=dtype)
    toks = tokens()
    logits, cache = m.run_with_cache(toks)
    hs = m.model(toks, output_hidden_states=True).hidden_states
    n = m.cfg.n_layers
    for layer in range(n):  # read, not recomputed: exact in any dtype
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_pre"], hs[layer])
    # the components sum to the final residual up to the rounding of each addition in the model
    comps, labels = cache.decompose_resid()
    assert comps.dtype == dtype
    _close(comps.double().sum(0), cache.final_resid(), 2 * len(labels), dtype)
    for layer in range(n):  # heads sum (plus the output bias) to the attention output
        heads = cache.head_results(layer).double().sum(-2)
        b = m.adapter.b_O(layer)
        if b is not None:
            heads = heads + b.double()
        _close(heads, cache[f"blocks.{layer}.hook_attn_out"], 4 * m.cfg.n_heads, dtype)


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gemma2"])
def test_bfloat16_logits_are_the_float32_logits_to_tolerance(kind):
    a, b = tiny(kind), tiny(kind, dtype=torch.bfloat16)
    toks = tokens()
    _close(b(toks), a(toks), 16 * a.cfg.n_layers, torch.bfloat16)


def _pair(kind: str) -> tuple[HookedModel, HookedModel]:
    return tiny(kind), tiny(kind, dtype=torch.bfloat16)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2"])
def test_key_moments_of_a_bfloat16_model(kind):
    """ROME/MEMIT's ``E[k kᵀ]``: float64 whatever the model's dtype; exact for the bf16 keys, close to float32."""
    m32, m16 = _pair(kind)
    toks = tokens(64, 16, seed=4)  # 1024 samples: a bf16 running sum would have drifted by percents
    c16 = key_moments(m16, [1], toks, progress=False)[1]
    c32 = key_moments(m32, [1], toks, progress=False)[1]
    assert c16.dtype == torch.float64 and c16.device.type == "cpu"
    _, cache = m16.run_with_cache(toks, names=["blocks.1.mlp.hook_post"])
    k = cache["blocks.1.mlp.hook_post"].double().reshape(-1, m16.cfg.d_mlp)
    assert _rel(c16, k.T @ k / k.shape[0]) < 1e-12  # the bf16 keys' own statistic, to float64 rounding
    assert _rel(c16, c32) < 2 * _eps(torch.bfloat16)  # only the keys' own bf16 rounding remains (~0.005)


@pytest.mark.parametrize("stat", ["hessian", "norm"])
def test_pruning_statistics_of_a_bfloat16_model(stat):
    """SparseGPT's ``XᵀX`` and Wanda's column norms accumulate in float32 from bf16 inputs."""
    m32, m16 = _pair("llama-gqa")
    toks = tokens(32, 16, seed=6)
    got: dict[torch.dtype, dict] = {}
    for m in (m32, m16):
        seen: dict = {}
        sequential(m, toks, stat, lambda layer, sites, st, seen=seen: seen.update(
            {(layer, k): v.value.clone() for k, v in st.items()}))
        got[m.dtype] = seen
    assert got[torch.float32].keys() == got[torch.bfloat16].keys()
    for key, v16 in got[torch.bfloat16].items():
        assert v16.dtype == torch.float32, key
        assert _rel(v16, got[torch.float32][key]) < 2 * _eps(torch.bfloat16), key  # measured ~0.005


def test_input_statistics_accumulate_in_float32():
    """From bf16 inputs, ``XᵀX`` to float32 accuracy (a bf16 product would be off by ~2e-3)."""
    from uncover.pruning.calibrate import InputStats

    x = torch.randn(4096, 32, generator=torch.Generator().manual_seed(0)).bfloat16()
    ref = x.double().T @ x.double()
    st = InputStats("hessian")
    for part in x.split(1024):
        st.add(part)
    assert st.value.dtype == torch.float32 and st.n == 4096
    assert _rel(st.value, ref) < 1e-6 < _rel(x.T @ x, ref)
