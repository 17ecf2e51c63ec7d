"""Memory a setting needs against what the machine has, checked before allocating.

A size that cannot fit (an SAE of ``--expansion 99999999``, a million restarts, a harvest of a
billion tokens held in memory) is refused with one :class:`~uncover.core.errors.UsageError` that
names the setting, the memory it needs, the memory available and a fix, before any work starts.
Estimates are lower bounds of the big allocations only, so a setting refused here could never
have run; the limit is the available memory of the device (RAM for the CPU, free GPU memory).
:func:`out_of_memory` words an allocation failure that slipped past the estimates the same way.
"""

from __future__ import annotations

import os
import re

from uncover.core.errors import UsageError

GiB = 2**30


def available_bytes(device: object = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device`` (None: unknown).

    >>> available_bytes("cpu") > 0
    True
    """
    dev = str(device)
    if dev.startswith("cuda"):
        try:
            import torch

            free, _ = torch.cuda.mem_get_info(None if dev == "cuda" else torch.device(dev))
            return int(free)
        except Exception:
            return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    """``"12.3 GiB"`` (or MiB below one GiB).

    >>> gib(3 * 2**30), gib(5 * 2**20)
    ('3.0 GiB', '5 MiB')
    """
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.0f} MiB"


def check_fits(needed: float, what: str, fix: str, device: object = "cpu") -> None:
    """Refuse ``what`` when its ``needed`` bytes exceed what ``device`` has available.

    >>> check_fits(2**50, "expansion (--expansion) 99999999", "lower --expansion")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: expansion (--expansion) 99999999 needs at least 1048576.0 GiB of memory, but \
this machine has ... available; lower --expansion
    """
    have = available_bytes(device)
    if have is not None and needed > have:
        where = "this machine" if not str(device).startswith("cuda") else f"{device}"
        raise UsageError(f"{what} needs at least {gib(needed)} of memory, but {where} has {gib(have)} available; "
                         f"{fix}")


_ALLOC = re.compile(r"(?:tried to allocate|allocate) (\d+) bytes|Tried to allocate ([\d.]+) ([GMK]i?B)")


def out_of_memory(e: BaseException) -> str | None:
    """A one-line message for an allocation failure (``MemoryError``, torch's CPU or CUDA out-of-memory), or None.

    >>> out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 11199999888 "
    ...                            "bytes. Error code 12"))[:60]
    'out of memory: the run tried to allocate 10.4 GiB at once; t'
    """
    text = str(e)
    is_oom = isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower()))
    if not is_oom:
        return None
    m = _ALLOC.search(text)
    size = ""
    if m and m.group(1):
        size = f" {gib(int(m.group(1)))}"
    elif m:
        size = f" {m.group(2)} {m.group(3)}"
    have = available_bytes("cpu")
    return (f"out of memory: the run tried to allocate{size or ' more than is free'} at once"
            + (f"; this machine has {gib(have)} available" if have is not None else "")
            + "; lower the sizes of the run (--batch-size, --tokens, --blocks, --expansion, --n ...)")
