"""Progress of long work: tqdm bars and messages on stderr, or silence, or a listener.

An operation receives a :class:`Progress` and uses it for its bars and messages; the
surface that runs it chooses where they go (the terminal for the CLI, nothing in tests,
a listener for the web workbench's jobs). A :class:`Progress` is truthy when it shows
anything, so it can be passed where older functions take ``progress: bool``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from uncover.core.errors import UncoverError

T = TypeVar("T")


class Cancelled(UncoverError):
    """The work was cancelled through its :class:`Progress`."""


class Progress:
    """Where progress goes.

    Args:
        enabled: show tqdm bars and messages on stderr.
        listener: called with ``(event, payload)`` for every message (``"message"``, text) and bar step
            (``"step"``, ``{"desc", "n", "total"}``); the web workbench streams these to the page.

    >>> p = Progress(enabled=False)
    >>> bool(p), sum(p.bar(range(3), desc="counting"))
    (False, 3)
    """

    def __init__(self, enabled: bool = True, listener: Callable[[str, Any], None] | None = None):
        self.enabled = enabled
        self.listener = listener
        self._cancel = threading.Event()

    def __bool__(self) -> bool:
        return self.enabled

    @classmethod
    def silent(cls) -> Progress:
        """Progress that shows nothing."""
        return cls(enabled=False)

    def message(self, text: str) -> None:
        """A one-line message (stderr in the terminal)."""
        self.check()
        if self.enabled:
            print(f"uncover: {text}", file=sys.stderr, flush=True)
        if self.listener is not None:
            self.listener("message", text)

    def bar(self, iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
        """Iterate with a bar; checks for cancellation at every step."""
        from tqdm.auto import tqdm

        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        with tqdm(iterable, total=total, desc=desc, disable=not self.enabled, leave=False, file=sys.stderr) as it:
            for n, item in enumerate(it):
                self.check()
                if self.listener is not None:
                    self.listener("step", {"desc": desc, "n": n, "total": total})
                yield item

    def cancel(self) -> None:
        """Ask the work to stop at its next step."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if :meth:`cancel` was called."""
        if self._cancel.is_set():
            raise Cancelled("cancelled")
