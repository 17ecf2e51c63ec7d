"""The cache pool: run_with_cache copies values into buffers of dropped caches (``hooks/pool.py``).

Each test checks what a user could notice: values stay bit-identical to a cache taken without the pool
(every name of every family, on the call that reuses buffers), a buffer is never lent while anything else
holds it (a cache, one tensor, a view, a NumPy array), and the memory the pool keeps is bounded.
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import torch

from tests.conftest import tokens
from tests.families.kinds import ALL_KINDS
from tests.families.kinds import family_model as tiny
from uncover import HookedModel
from uncover.hooks import pool as pool_mod
from uncover.hooks.pool import CachePool


@pytest.fixture(params=["heap", "mapped"])
def mapped(request, monkeypatch):
    """Both kinds of new buffer: from torch's allocator (small values) and mapped from the kernel."""
    monkeypatch.setattr(pool_mod, "MAPPED", 0 if request.param == "mapped" else 1 << 40)
    return request.param


def _storages(cache) -> set[int]:
    """Where a cache's values live: stored tensors and the tensors its recipes keep (logits are the model's)."""
    held = [v for k, v in cache.store.items() if k != "logits"]
    held += [t for lazy in cache.pending.values() for t in lazy.inputs if t is not None]
    return {t.untyped_storage().data_ptr() for t in held}


def _values(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.tensor(x.copy() if isinstance(x, np.ndarray) else x.clone().numpy())


def _pooled(m: HookedModel) -> set[int]:
    """The pool's buffers (values that are views with gaps, like GPT-2's q/k/v of one fused projection, are kept
    in the model's own tensor)."""
    return {s.data_ptr() for call in m.cache_pool._calls for s in call}


def _plain(m: HookedModel, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every value without the pool, read out (recipes computed) and cloned."""
    m.cache_pool.enabled = False
    try:
        _, cache = m.run_with_cache(ids)
        return {n: cache[n].clone() for n in cache}
    finally:
        m.cache_pool.enabled = True


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_reused_buffers_give_bit_identical_values_for_every_family(kind, monkeypatch):
    monkeypatch.setattr(pool_mod, "MAPPED", 0)  # tiny values: mapped like a real model's
    m = tiny(kind)
    ids = tokens()
    want = _plain(m, ids)
    _, first = m.run_with_cache(ids)
    lent = _pooled(m)
    assert lent and lent <= _storages(first)
    del first
    gc.collect()
    _, again = m.run_with_cache(tokens(seed=7))  # other values in the same buffers
    assert _pooled(m) == lent and lent <= _storages(again)
    del again
    _, cache = m.run_with_cache(ids)
    assert set(cache) == set(want)
    for n in want:
        assert torch.equal(cache[n], want[n]), n
        assert cache[n].shape == want[n].shape and cache[n].dtype == want[n].dtype, n


def test_a_held_cache_tensor_view_or_array_is_never_overwritten(mapped):
    m = tiny("llama")
    a, b = tokens(seed=1), tokens(seed=2)
    for hold in ("cache", "tensor", "view", "numpy"):
        m.cache_pool.clear()
        _, c1 = m.run_with_cache(a)
        _, c2 = m.run_with_cache(a)  # two generations kept: fill both, then drop all but what is held
        name = "blocks.1.hook_resid_post"
        kept = {"cache": c1, "tensor": c1[name], "view": c1[name][:, 1:, :3],
                "numpy": c1[name].numpy()}[hold]
        before = _values(kept[name] if hold == "cache" else kept)
        del c1, c2
        gc.collect()
        for ids in (b, a, b):
            m.run_with_cache(ids)
        after = _values(kept[name] if hold == "cache" else kept)
        assert torch.equal(after, before), hold


def test_a_loop_that_rebinds_its_cache_reuses_the_one_before():
    """``logits, cache = model.run_with_cache(...)``: the previous cache is alive during the call."""
    m = tiny("llama")
    ids = tokens()
    lent: list[set[int]] = []
    cache = None
    for _ in range(4):
        _, cache = m.run_with_cache(ids)
        lent.append(_storages(cache))
    assert lent[2] == lent[0] and lent[3] == lent[1] and not lent[0] & lent[1]


def test_pool_keeps_at_most_two_calls_and_clear_gives_it_back():
    m = tiny("llama")
    caches = [m.run_with_cache(tokens())[1] for _ in range(2)]  # both held: nothing reused
    two = m.cache_pool.nbytes
    assert two > 0
    caches += [m.run_with_cache(tokens())[1] for _ in range(2)]
    assert m.cache_pool.nbytes == two  # the first two calls' buffers are the caches' alone now
    del caches
    gc.collect()
    assert m.cache_pool.nbytes == two
    m.cache_pool.clear()
    assert m.cache_pool.nbytes == 0


def test_off_limit_or_disabled_keeps_the_models_own_tensors():
    m = tiny("llama")
    ids = tokens()
    m.cache_pool.max_bytes = 0
    _, c = m.run_with_cache(ids)
    del c
    _, c = m.run_with_cache(ids)
    assert m.cache_pool.nbytes == 0
    m.cache_pool = CachePool()
    m.cache_pool.enabled = False
    _, c = m.run_with_cache(ids)
    assert m.cache_pool.nbytes == 0


def test_one_storage_for_values_the_model_passes_on():
    """``resid_post`` of a layer is ``resid_pre`` of the next: one copy, not two."""
    m = tiny("llama")
    _, c = m.run_with_cache(tokens())
    del c
    _, c = m.run_with_cache(tokens())
    for layer in range(m.cfg.n_layers - 1):
        post, pre = c[f"blocks.{layer}.hook_resid_post"], c[f"blocks.{layer + 1}.hook_resid_pre"]
        assert post.untyped_storage().data_ptr() == pre.untyped_storage().data_ptr()


def test_shapes_change_between_calls():
    m = tiny("llama")
    for pos in (8, 5, 8, 12, 5):
        ids = tokens(pos=pos, seed=pos)
        want = _plain(m, ids)
        _, c = m.run_with_cache(ids)
        assert all(torch.equal(c[n], want[n]) for n in want)
        del c


def test_saving_one_cached_tensor_writes_only_it(tmp_path):
    m = tiny("llama")
    _, c = m.run_with_cache(tokens())
    del c
    _, c = m.run_with_cache(tokens())
    t = c["blocks.0.mlp.hook_pre"]
    torch.save(t, tmp_path / "t.pt")
    assert (tmp_path / "t.pt").stat().st_size < t.nbytes + 2048


def test_inference_mode_and_a_cache_moved_elsewhere():
    m = tiny("llama")
    ids = tokens()
    want = _plain(m, ids)
    with torch.inference_mode():
        for _ in range(2):
            _, c = m.run_with_cache(ids)
    assert all(torch.equal(c[n], want[n]) for n in want)
    before = m.cache_pool.nbytes
    _, c = m.run_with_cache(ids, device="cpu")  # asked for a device: copied there, not pooled
    assert m.cache_pool.nbytes <= before


def test_sessions_at_once_never_share_a_buffer():
    pool = CachePool()
    with pool.session() as s:
        kept = [s.keep(torch.full((64,), float(i))) for i in range(8)]
    del kept
    gc.collect()
    got: list[list[torch.Tensor]] = [[], []]
    barrier = threading.Barrier(2)

    def take(i: int) -> None:
        barrier.wait()
        with pool.session() as s:
            got[i] = [s.keep(torch.full((64,), 10.0 * i + j)) for j in range(8)]

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ptrs = [{t.untyped_storage().data_ptr() for t in g} for g in got]
    assert not ptrs[0] & ptrs[1]
    for i, g in enumerate(got):
        assert [float(t[0]) for t in g] == [10.0 * i + j for j in range(8)]


def test_in_place_change_between_two_keeps_makes_a_new_copy():
    pool = CachePool()
    with pool.session() as s:
        v = torch.ones(32)
        a = s.keep(v)
        v.mul_(2)  # the model changed it in place between two hook points
        b = s.keep(v)
    assert torch.equal(a, torch.ones(32)) and torch.equal(b, torch.full((32,), 2.0))


def test_layouts_are_kept():
    pool = CachePool()
    with pool.session() as s:
        v = torch.randn(2, 3, 4).transpose(0, 2)  # dense, not contiguous: same strides in the copy
        a = s.keep(v)
        gap = torch.randn(4, 6)[:, ::2]  # not dense: kept as it is
        b = s.keep(gap)
    assert a.stride() == v.stride() and torch.equal(a, v) and a.data_ptr() != v.data_ptr()
    assert b is gap
