"""Scoped torch thread count.

Small optimisation loops (probes, CCS, toy training runs) are thousands of tiny tensor ops;
on a busy machine the intra-op thread pool spins and waits, so they run faster on one thread
(measured: 26 s with 2 threads vs 0.4 s with 1 for a CCS fit). The count is restored on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch threads inside the block (``None``: leave the count alone).

    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
