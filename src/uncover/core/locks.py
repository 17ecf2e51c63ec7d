"""A lock around building a cache entry, so that processes sharing a cache build it once.

Test workers, Ray workers and two terminals can ask for the same cached artefact (the quick SAE, the quick
transcoders) at once. :func:`cache_lock` serialises the build: the first process builds and installs the
entry, the others wait, then find it and load it. The lock file sits beside the entry and is left in place
(removing it would race with a waiting process).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


@contextmanager
def cache_lock(entry: str | Path, timeout: float = -1) -> Iterator[None]:
    """Hold an inter-process lock for building ``entry`` (``timeout`` seconds, -1: wait as long as it takes).

    >>> import tempfile
    >>> entry = Path(tempfile.mkdtemp()) / "thing"
    >>> with cache_lock(entry):
    ...     _ = entry.mkdir()
    >>> entry.is_dir(), entry.with_name("thing.lock").is_file()
    (True, True)
    """
    entry = Path(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry.with_name(entry.name + ".lock")), timeout=timeout):
        yield
