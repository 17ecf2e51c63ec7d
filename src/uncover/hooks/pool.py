"""Reuse the memory of dropped caches: cached values are copied into buffers that dropped caches left.

Why: a cache keeps hundreds of tensors alive, so every ``run_with_cache`` call got its values in
memory that the process had just taken from the kernel, and when the cache was dropped the C allocator
gave most of it back. Taking a page from the kernel costs its zeroing and a page fault (1.9 µs per
4 KiB page on the machine BENCHMARKS.md measures: ~0.15× a forward pass when caching every hook);
copying into memory the process already has costs far less. The forward pass's own temporaries are
freed as they would be without a cache, and reused as in a plain forward.

:class:`CachePool` (one per model) remembers the buffers of the last ``generations`` calls (two, so
that ``logits, cache = model.run_with_cache(...)`` in a loop, where the previous cache is still alive
during the next call, reuses the one before). A buffer is reused only when the pool holds the only
reference to it: no cache, tensor, view, NumPy array or DLPack capsule uses it any more. Values are
copied bit for bit with the same shape and strides, one buffer each (so ``torch.save`` of one cached
tensor writes only it). A value with no free buffer of its size gets a new one; buffers of 128 KiB
and more are mapped from the kernel on their own, outside the C allocator's heap, so that the heap
stays what a plain forward pass leaves (the allocator trims a heap grown over kept tensors, and the
next forward pass pays for it again). Only CPU tensors without autograd history are pooled (CUDA's
caching allocator already reuses memory), and at most ``max_bytes`` of new buffers per call (default:
an eighth of physical memory; values beyond it stay in the model's own tensors). What the pool keeps
once the caches are dropped is at most two calls' worth; ``model.cache_pool.clear()`` gives it back.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from collections import deque

import torch

_use_count = getattr(torch._C, "_storage_Use_Count", None)
MAPPED = 128 << 10
"""Buffers this big or bigger are mapped from the kernel on their own (glibc's default mmap threshold)."""


def _physical_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def version_of(t: torch.Tensor) -> int | None:
    """``t``'s in-place modification counter (``None`` for inference-mode tensors, which have none).

    >>> t = torch.zeros(2)
    >>> _ = t.add_(1)
    >>> version_of(t)
    1
    """
    try:
        return t._version
    except RuntimeError:
        return None


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t`` covers its elements with no gaps or overlaps (contiguous up to a permutation of axes)."""
    if t.is_contiguous():
        return True
    dims = sorted((st, n) for st, n in zip(t.stride(), t.shape) if n != 1)
    expect = 1
    for st, n in dims:
        if st != expect:
            return False
        expect *= n
    return True


def _anonymous(nbytes: int) -> torch.UntypedStorage:
    """A storage in memory of its own, mapped from the kernel (outside the C allocator's heap)."""
    if nbytes < MAPPED or not hasattr(mmap, "MAP_ANONYMOUS"):  # small, or no anonymous mappings here
        return torch.empty(nbytes, dtype=torch.uint8).untyped_storage()
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(m, dtype=torch.uint8).untyped_storage()  # unmapped when the storage dies


def _layout(t: torch.Tensor) -> tuple:
    """Which values ``t`` shows: its storage's address and its view of it (the storage object is checked too,
    since a freed storage's address can be given to the next one)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


class CachePool:
    """Storages of a model's recent ``run_with_cache`` calls, lent again once no one else holds them.

    >>> pool = CachePool()
    >>> with pool.session() as s:
    ...     kept = s.keep(torch.ones(4))  # nothing free yet: the value itself, remembered
    >>> del kept
    >>> with pool.session() as s:
    ...     again = s.keep(torch.full((4,), 2.0))  # a copy in the first call's buffer
    >>> again
    tensor([2., 2., 2., 2.])
    >>> pool.nbytes
    16
    """

    def __init__(self, generations: int = 2, max_bytes: int | None = None):
        self.enabled = _use_count is not None
        """Set to ``False`` to keep every value in the memory the model computed it in."""
        self.max_bytes = _physical_bytes() // 8 if max_bytes is None else max_bytes
        """The most memory a call registers for reuse; values beyond it are kept but not pooled."""
        self._calls: deque[list[torch.UntypedStorage]] = deque(maxlen=generations)
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of the storages the pool references (in use by caches or free)."""
        with self._lock:
            return sum(s.nbytes() for s in {id(s): s for c in self._calls for s in c}.values())

    def clear(self) -> None:
        """Forget every storage: memory no cache uses goes back to the allocator."""
        with self._lock:
            self._calls.clear()

    def session(self) -> PoolSession:
        """A call's lender: the free storages are taken out of the pool (so concurrent calls never share one)."""
        free: dict[int, list[torch.UntypedStorage]] = {}
        if self.enabled:
            with self._lock:
                taken: set[int] = set()
                for call in self._calls:
                    for s in call:
                        if id(s) not in taken and _use_count(s._cdata) == 1:  # type: ignore[misc]
                            taken.add(id(s))
                            free.setdefault(s.nbytes(), []).append(s)
                for i, call in enumerate(self._calls):
                    self._calls[i] = [s for s in call if id(s) not in taken]
        return PoolSession(self, free)

    def _finish(self, kept: list[torch.UntypedStorage]) -> None:
        with self._lock:
            self._calls.append(kept)


class PoolSession:
    """One call's use of a :class:`CachePool`: :meth:`keep` each value, then :meth:`close` (or use ``with``)."""

    def __init__(self, pool: CachePool, free: dict[int, list[torch.UntypedStorage]]):
        self.pool = pool
        self._free = free
        self._kept: dict[int, torch.UntypedStorage] = {}
        self._room = pool.max_bytes
        self._seen: dict[tuple, tuple[weakref.ref, int | None, torch.Tensor]] = {}
        """Values kept so far, by :func:`_layout`: (the storage, weakly, its in-place counter, what was kept)."""

    def keep(self, v: torch.Tensor) -> torch.Tensor:
        """``v``, or a bit-identical copy of it (same shape and strides) in a free buffer of the pool.

        The same values kept twice (``resid_post`` of a layer is ``resid_pre`` of the next: one storage, seen
        through two tensor objects), with no in-place change in between, give the same result.
        """
        if (not self.pool.enabled or type(v) is not torch.Tensor or v.device.type != "cpu"
                or v.requires_grad or v.numel() == 0):
            return v
        key = _layout(v)
        again = self._again(key, v)
        if again is not None:
            return again
        out = v
        if _dense(v):
            bufs = self._free.get(v.nbytes)
            storage = bufs.pop() if bufs else self._new(v.nbytes)
            if storage is not None:
                out = torch.empty(0, dtype=v.dtype).set_(storage, 0, v.shape, v.stride())
                out.copy_(v)
                self._kept[id(storage)] = storage
        self._seen[key] = (weakref.ref(v.untyped_storage()), version_of(v), out)
        return out

    def _new(self, nbytes: int) -> torch.UntypedStorage | None:
        if self._room < nbytes:
            return None
        self._room -= nbytes
        return _anonymous(nbytes)

    def kept(self, v: torch.Tensor) -> torch.Tensor | None:
        """What :meth:`keep` gave for the same values (same storage and layout, unchanged since), or ``None``."""
        return self._again(_layout(v), v) if self._seen else None

    def _again(self, key: tuple, v: torch.Tensor) -> torch.Tensor | None:
        seen = self._seen.get(key)
        if seen is not None and seen[0]() is v.untyped_storage() and seen[1] is not None and seen[1] == version_of(v):
            return seen[2]
        return None

    def close(self) -> None:
        """Hand this call's storages to the pool; free buffers it did not use are let go."""
        self.pool._finish(list(self._kept.values()))
        self._free, self._kept, self._seen = {}, {}, {}

    def __enter__(self) -> PoolSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
