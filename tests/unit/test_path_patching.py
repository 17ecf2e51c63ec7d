"""Path patching (staged, batched) against two plain forward passes per sender."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import tiny, tokens
from uncover.core.errors import UncoverError
from uncover.patching.path import parse_receiver, path_patching


def _pair(pos: int = 7, first_diff: int = 2, seed: int = 3):
    clean = tokens(batch=1, pos=pos, seed=seed)
    corrupt = clean.clone()
    corrupt[0, first_diff:] = tokens(batch=1, pos=pos - first_diff, seed=seed + 5)[0]
    return clean, corrupt


def _naive(m, clean, corrupt, sender, recv, rpos, freeze_mlps, a=5, w=9):
    """Step 1 and step 2 of path patching written out with one forward pass each."""
    n = m.cfg.n_layers
    z = [f"blocks.{i}.attn.hook_z" for i in range(n)]
    mlp = [f"blocks.{i}.hook_mlp_out" for i in range(n)]
    _, cc = m.run_with_cache(clean)
    _, xc = m.run_with_cache(corrupt)
    sl, sh = sender

    def freeze(j):
        def fn(v, hp):
            out = cc[z[j]].clone()
            if j == sl:
                out[:, :, sh] = xc[z[j]][:, :, sh]
            return out
        return fn

    hooks = [(z[j], freeze(j)) for j in range(n)]
    if freeze_mlps:
        hooks += [(mlp[j], lambda v, hp, j=j: cc[mlp[j]].clone()) for j in range(n)]
    seen = {}
    names = {(la, which): f"blocks.{la}.attn.hook_{which}" for la, _, which in recv}
    rec = [(nm, lambda v, hp, k=k: seen.__setitem__(k, v.clone())) for k, nm in names.items()]
    with torch.no_grad(), m.hooks(hooks + rec):
        out = m(clean)[0, -1]
    if recv:
        def patch(k):
            def fn(v, hp):
                out = v.clone()
                pos = slice(None) if rpos is None else rpos
                for la, h, which in recv:
                    if (la, which) == k:
                        out[:, pos, h] = seen[k][:, pos, h]
                return out
            return fn
        with torch.no_grad(), m.hooks([(nm, patch(k)) for k, nm in names.items()]):
            out = m(clean)[0, -1]
    return float(out[a] - out[w])


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gemma2", "qwen3"])
@pytest.mark.parametrize("freeze_mlps", [False, True])
def test_to_logits_equals_naive(kind, freeze_mlps, one_thread_no_grad):
    m = tiny(kind)
    clean, corrupt = _pair()
    r = path_patching(m, clean, corrupt, 5, 9, normalise=False, freeze_mlps=freeze_mlps)
    assert r.grid.shape == (m.cfg.n_layers, m.cfg.n_heads)
    for la in range(m.cfg.n_layers):
        for h in range(m.cfg.n_heads):
            ref = _naive(m, clean, corrupt, (la, h), [], None, freeze_mlps) - r.clean_value
            assert abs(float(r.grid[la, h]) - ref) < 1e-4, (la, h)


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt_neox"])
@pytest.mark.parametrize("rpos", [None, [-1]])
def test_to_receiver_heads_equals_naive(kind, rpos, one_thread_no_grad):
    m = tiny(kind)
    clean, corrupt = _pair()
    recv = [(2, 1, "q"), (2, 3, "q"), (1, 0, "k"), (2, 1, "v")]
    r = path_patching(m, clean, corrupt, 5, 9, receivers=[f"L{a}H{b}.{c}" for a, b, c in recv],
                      receiver_positions=rpos, normalise=False)
    assert r.receivers == ["L2H1.q", "L2H3.q", "L1H0.k", "L2H1.v"]
    assert torch.isnan(r.grid[2]).all()  # senders at the last receiver's layer have no path
    for la in range(2):
        for h in range(m.cfg.n_heads):
            ref = _naive(m, clean, corrupt, (la, h), recv, rpos, False) - r.clean_value
            assert abs(float(r.grid[la, h]) - ref) < 1e-4, (la, h)


def test_identical_prompts_have_no_effect_and_pairs_average(one_thread_no_grad):
    m = tiny("llama")
    clean, corrupt = _pair()
    same = path_patching(m, clean, clean, 5, 9, normalise=False)
    assert same.grid.abs().max() < 1e-5
    one = path_patching(m, clean, corrupt, 5, 9, normalise=False)
    two = path_patching(m, [clean, clean], [corrupt, clean], 5, 9, normalise=False)
    assert torch.allclose(two.grid, one.grid / 2, atol=1e-5)
    norm = path_patching(m, clean, corrupt, 5, 9)
    assert torch.allclose(norm.grid, one.grid / (one.clean_value - one.corrupt_value), atol=1e-5)
    frame = norm.to_frame()
    assert len(frame) == m.cfg.n_layers * m.cfg.n_heads and not frame["effect"].isna().any()
    assert "L" in norm.summary() and norm.plot().data


def test_sender_subset_and_errors(one_thread_no_grad):
    m = tiny("llama-gqa")
    clean, corrupt = _pair()
    r = path_patching(m, clean, corrupt, 5, 9, senders=[(0, 1), (1, 2)], normalise=False)
    assert (~torch.isnan(r.grid)).sum() == 2
    full = path_patching(m, clean, corrupt, 5, 9, normalise=False)
    assert math.isclose(float(r.grid[1, 2]), float(full.grid[1, 2]), abs_tol=1e-5)
    with pytest.raises(UncoverError, match="key-value heads 0..1"):
        path_patching(m, clean, corrupt, 5, 9, receivers=["L2H3.k"])
    with pytest.raises(UncoverError, match="L9H6.q"):
        path_patching(m, clean, corrupt, 5, 9, receivers=["head 3"])
    with pytest.raises(UncoverError, match="no sender head"):
        path_patching(m, clean, corrupt, 5, 9, receivers=["L0H1.q"])
    with pytest.raises(UncoverError, match="equal lengths"):
        path_patching(m, clean, corrupt[:, :5], 5, 9)
    with pytest.raises(UncoverError, match="out of range"):
        path_patching(m, clean, corrupt, 5, 9, senders=[(7, 0)])
    assert parse_receiver("3.2.v") == (3, 2, "v")
