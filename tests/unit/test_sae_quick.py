"""quick_sae: trains once, caches atomically under a key of every setting, loads the same SAE back."""

from __future__ import annotations

import torch

from tests.conftest import tiny
from uncover.sae.quick import QuickSAESpec, cache_path, quick_sae


def test_quick_sae_trains_caches_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("UNCOVER_CACHE", str(tmp_path))
    torch.manual_seed(0)
    m = tiny("llama")
    blocks = torch.randint(0, m.cfg.d_vocab, (16, 12))
    spec = QuickSAESpec(expansion=2, k=4, steps=30, batch_size=64)
    sae = quick_sae(m, spec, tokens=blocks, progress=False)
    hook = f"blocks.{m.cfg.n_layers // 2}.hook_resid_post"
    assert sae.cfg.hook_name == hook and sae.cfg.d_sae == 2 * m.cfg.d_model and sae.cfg.k == 4
    path = cache_path(m, spec, blocks)
    assert (path / "cfg.json").is_file() and str(path).startswith(str(tmp_path))
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]  # no half-written dirs left
    again = quick_sae(m, spec, tokens=blocks, progress=False)  # from the cache: identical weights
    for k in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(again, k), getattr(sae, k))
    # the SAE learnt something: it reconstructs the hook's activations better than their mean
    _, cache = m.run_with_cache(blocks, names=[hook])
    x = cache[hook][:, 1:].reshape(-1, m.cfg.d_model)
    err = (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert err < 0.9, float(err)
    # any other setting or other tokens -> another cache entry
    assert cache_path(m, QuickSAESpec(expansion=2, k=4, steps=31, batch_size=64), blocks) != path
    assert cache_path(m, spec, blocks.flip(0)) != path
