"""Attribution patching against per-site autograd gradients, and against exact patching where it is linear."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tests.conftest import tiny, tokens
from uncover.attribution.attribution_patching import (
    SITES,
    AttributionComparison,
    AttributionResult,
    attribution_patching,
    attribution_patching_sites,
    compare_attribution,
    pearson,
    spearman,
)
from uncover.core.errors import UncoverError
from uncover.patching.activation import PatchResult, activation_patching

NAME = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "z": "attn.hook_z"}


def _pair(pos: int = 7, first_diff: int = 3, seed: int = 1):
    clean = tokens(batch=1, pos=pos, seed=seed)
    corrupt = clean.clone()
    corrupt[0, first_diff:] = tokens(batch=1, pos=pos - first_diff, seed=seed + 7)[0]
    return clean, corrupt


def _site_attribution(m, base, src, name, a, w):
    """grad · (src − base) at one site, with the gradient from its own forward pass (the site made a leaf)."""
    _, cache = m.run_with_cache(src, names=[name])
    _, base_cache = m.run_with_cache(base, names=[name])
    leaf = {}

    def fn(value, hp):
        leaf["x"] = value.detach().clone().requires_grad_(True)
        return leaf["x"]

    with torch.enable_grad(), m.hooks([(name, fn)]):
        out = m(base)[0, -1]
        (g,) = torch.autograd.grad(out[a] - out[w], leaf["x"])
    return (g * (cache[name] - base_cache[name])).sum(-1)[0]  # [pos] or [pos, head]


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gemma2", "gpt_neox"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_every_site_equals_its_own_gradient(kind, direction):
    torch.set_num_threads(1)
    m = tiny(kind)
    clean, corrupt = _pair()
    base, src = (corrupt, clean) if direction == "denoise" else (clean, corrupt)
    out = attribution_patching_sites(m, clean, corrupt, 5, 9, direction=direction, normalise=False)
    with torch.no_grad():
        o = m(base)[0, -1]
    base_value = float(o[5] - o[9])
    for (hook, per), r in out.items():
        assert isinstance(r, AttributionResult) and isinstance(r, PatchResult)
        assert r.first_diff == 3
        for layer in range(m.cfg.n_layers):
            ref = _site_attribution(m, base, src, f"blocks.{layer}.{NAME[hook]}", 5, 9)
            ref[:3] = 0.0  # before the first difference the activations are equal
            if per == "head_pos":
                ref = ref.T
            elif per == "head":
                ref = ref.sum(0)
            torch.testing.assert_close(r.grid[layer] - base_value, ref, rtol=1e-4, atol=1e-5)
        assert r.grid.abs().max() > 0


def test_equals_exact_patching_where_the_model_is_linear():
    # with the final norm removed, the logit difference is linear in the last layer's MLP output
    # (it joins the residual after every nonlinearity), so the first-order estimate is exact
    torch.set_num_threads(1)
    m = tiny("llama")
    m.model.model.norm = torch.nn.Identity()
    with torch.no_grad():
        m.model.lm_head.weight.mul_(1000.0)  # without the norm the residual is small: scale logits back up
    clean, corrupt = _pair()
    last = m.cfg.n_layers - 1
    for direction in ("denoise", "noise"):
        kw = {"hook": "mlp_out", "direction": direction, "normalise": False}
        approx = attribution_patching(m, clean, corrupt, 5, 9, **kw)
        exact = activation_patching(m, clean, corrupt, 5, 9, **kw)
        torch.testing.assert_close(approx.grid[last], exact.grid[last], rtol=1e-5, atol=1e-5)
        base = exact.corrupt_value if direction == "denoise" else exact.clean_value
        assert (exact.grid[last] - base).abs().max() > 1e-2
        # earlier layers pass through nonlinear blocks: there it is only an estimate
        assert (approx.grid[0] - exact.grid[0]).abs().max() > 1e-3


def test_normalised_like_activation_patching():
    m = tiny("qwen2")
    clean, corrupt = _pair()
    raw = attribution_patching(m, clean, corrupt, 5, 9, hook="z", per="head", normalise=False)
    rec = attribution_patching(m, clean, corrupt, 5, 9, hook="z", per="head")
    exact = activation_patching(m, clean, corrupt, 5, 9, hook="z", per="head")
    assert rec.clean_value == pytest.approx(exact.clean_value, abs=1e-5)
    assert rec.corrupt_value == pytest.approx(exact.corrupt_value, abs=1e-5)
    torch.testing.assert_close(rec.grid, (raw.grid - raw.corrupt_value) / (raw.clean_value - raw.corrupt_value))
    assert rec.title.startswith("Attribution patching") and len(rec.to_frame()) == rec.grid.numel()


def test_correlations_match_pandas():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, generator=g)
    y = x + 0.5 * torch.randn(40, generator=g)
    y[:5] = 1.0  # ties
    x[10:13] = 0.0
    s = pd.Series(x.tolist()), pd.Series(y.tolist())
    assert pearson(x, y) == pytest.approx(s[0].corr(s[1]), abs=1e-9)

    def ranks(v):  # 1 + number below + half the other equal values: mean rank of ties
        return pd.Series([1 + sum(b < a for b in v) + (sum(b == a for b in v) - 1) / 2 for a in v])

    ref = ranks(x.tolist()).corr(ranks(y.tolist()))
    assert spearman(x, y) == pytest.approx(ref, abs=1e-9)


def test_comparison_result():
    torch.set_num_threads(1)
    m = tiny("llama-gqa")
    clean, corrupt = _pair()
    c = compare_attribution(m, clean, corrupt, 5, 9, sites=SITES)
    assert isinstance(c, AttributionComparison)
    corr = c.correlations()
    assert list(corr["site"]) == ["resid_pre/pos", "attn_out/pos", "mlp_out/pos", "z/head", "z/head_pos"]
    # cells compared: positions from the first difference on, all heads
    n, h = m.cfg.n_layers, m.cfg.n_heads
    assert list(corr["cells"]) == [n * 4, n * 4, n * 4, n * h, n * h * 4]
    e, a = c.exact[0], c.approx[0]
    assert corr["pearson"][0] == pytest.approx(pearson(e.grid[:, 3:], a.grid[:, 3:]))
    assert corr["pearson"].min() > 0.5  # a tiny random model is close to linear
    frame = c.to_frame()
    assert len(frame) == sum(r.grid.numel() for r in c.exact) and {"exact", "attribution"} <= set(frame.columns)
    assert "Pearson" in c.summary() and len(c.plot().data) == 6


def test_errors():
    m = tiny("llama")
    clean, corrupt = _pair()
    with pytest.raises(UncoverError, match="valid: resid_pre, attn_out, mlp_out, z"):
        attribution_patching(m, clean, corrupt, 5, 9, hook="resid_mid")
    with pytest.raises(UncoverError, match="valid: head, head_pos"):
        attribution_patching(m, clean, corrupt, 5, 9, hook="z", per="pos")
    with pytest.raises(UncoverError, match="equal lengths"):
        attribution_patching(m, clean, corrupt[:, :-1], 5, 9)
    with pytest.raises(UncoverError, match="valid: denoise, noise"):
        attribution_patching(m, clean, corrupt, 5, 9, direction="both")
