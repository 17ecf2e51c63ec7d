"""Activation patching (fast path) against one full forward pass per patch."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny, tokens
from uncover import Replace
from uncover.core.errors import UncoverError
from uncover.patching.activation import activation_patching


def _pair(pos: int = 7, first_diff: int = 3, seed: int = 1):
    clean = tokens(batch=1, pos=pos, seed=seed)
    corrupt = clean.clone()
    corrupt[0, first_diff:] = tokens(batch=1, pos=pos - first_diff, seed=seed + 7)[0]
    return clean, corrupt


def _slow(m, clean, corrupt, name, cell_fn, a, w, direction):
    base, src = (corrupt, clean) if direction == "denoise" else (clean, corrupt)
    _, cache = m.run_with_cache(src, names=[name])
    with torch.no_grad(), m.intervene([cell_fn(name, cache[name])]):
        out = m(base)[0, -1]
    return float(out[a] - out[w])


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gemma2", "gpt_neox"])
@pytest.mark.parametrize("hook", ["resid_pre", "attn_out", "mlp_out"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_per_position_equals_one_forward_per_patch(kind, hook, direction):
    m = tiny(kind)
    clean, corrupt = _pair()
    r = activation_patching(m, clean, corrupt, 5, 9, hook=hook, direction=direction, normalise=False)
    assert r.grid.shape == (m.cfg.n_layers, 7) and r.first_diff == 3
    for layer in range(m.cfg.n_layers):
        for p in (0, 3, 4, 6):  # before, at and after the first differing token
            name = f"blocks.{layer}.hook_{hook}"
            ref = _slow(m, clean, corrupt, name, lambda n, s, p=p: Replace(n, source=s, positions=[p]), 5, 9,
                        direction)
            assert abs(float(r.grid[layer, p]) - ref) < 1e-4, (layer, p)


@pytest.mark.parametrize("kind", ["llama-gqa", "qwen3", "gpt_neox"])
def test_per_head_and_head_position(kind):
    m = tiny(kind)
    clean, corrupt = _pair()
    heads = activation_patching(m, clean, corrupt, 5, 9, hook="z", per="head", normalise=False)
    cells = activation_patching(m, clean, corrupt, 5, 9, hook="z", per="head_pos", normalise=False)
    assert heads.grid.shape == (m.cfg.n_layers, m.cfg.n_heads)
    assert cells.grid.shape == (m.cfg.n_layers, m.cfg.n_heads, 7)
    for layer in range(m.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        for h in range(m.cfg.n_heads):
            ref = _slow(m, clean, corrupt, name, lambda n, s, h=h: Replace(n, source=s, heads=[h]), 5, 9, "denoise")
            assert abs(float(heads.grid[layer, h]) - ref) < 1e-4
            for p in (0, 4, 6):
                ref = _slow(m, clean, corrupt, name, lambda n, s, h=h, p=p: Replace(n, source=s, heads=[h],
                                                                                      positions=[p]), 5, 9, "denoise")
                assert abs(float(cells.grid[layer, h, p]) - ref) < 1e-4


def test_normalised_recovery_endpoints():
    m = tiny("llama")
    clean, corrupt = _pair()
    r = activation_patching(m, clean, corrupt, 5, 9)
    # positions before the first difference are identical in both runs: exactly 0 recovery
    assert torch.all(r.grid[:, :3] == 0)
    with torch.no_grad():
        c, k = m(clean)[0, -1], m(corrupt)[0, -1]
    assert abs(r.clean_value - float(c[5] - c[9])) < 1e-5 and abs(r.corrupt_value - float(k[5] - k[9])) < 1e-5
    assert len(r.to_frame()) == r.grid.numel()


def test_errors():
    m = tiny("llama")
    clean, corrupt = _pair()
    with pytest.raises(UncoverError, match="equal lengths"):
        activation_patching(m, clean, corrupt[:, :-1], 5, 9)
    with pytest.raises(UncoverError, match="valid"):
        activation_patching(m, clean, corrupt, 5, 9, hook="resid_mid")
    with pytest.raises(UncoverError, match="valid"):
        activation_patching(m, clean, corrupt, 5, 9, hook="z", per="pos")


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gemma3"])
def test_replay_from_any_layer_reproduces_logits(kind):
    from uncover.hooks.replay import capture_calls, run_from, run_staged

    m = tiny(kind)
    toks = tokens(batch=1, pos=6)
    logits, calls = capture_calls(m, m.tokenize(toks))
    _, cache = m.run_with_cache(toks, names=lambda n: n.endswith("hook_resid_pre"))
    for layer in range(m.cfg.n_layers):
        out = run_from(m, calls, layer, cache[f"blocks.{layer}.hook_resid_pre"])
        torch.testing.assert_close(out, logits, rtol=1e-5, atol=1e-5)
    stages = {layer: cache[f"blocks.{layer}.hook_resid_pre"] for layer in range(m.cfg.n_layers)}
    staged = run_staged(m, calls, stages, 5)
    torch.testing.assert_close(staged, logits[:, 5].expand(m.cfg.n_layers, -1), rtol=1e-5, atol=1e-5)
