"""The workbench's job queue: one worker thread runs everything that touches the model.

One model per server, so requests that need it are queued and run one at a time by a single
worker thread (:class:`Worker`). Operations run as :class:`Job` records (status, live progress,
result, provenance, files); short views (the prompt view, a patch cell) run on the same thread
and are awaited by their request. Interventions are always scoped (``with model.intervene``)
inside one piece of work, so two tabs never see each other's hooks; a job that fails leaves the
server running and the model's weights as they were (a snapshot is restored for operations that
change weights).

Cancellation: a :class:`~uncover.core.progress.Progress` carries the cancel flag; since many
library functions take a plain ``progress: bool``, the worker also checks the flag before every
forward pass of the model (a forward pre-hook), and, for operations without a model (toy
training), before every module call on the worker thread (a global pre-hook installed only for
that job).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.progress import Cancelled, Progress

log = logging.getLogger("uncover.serve")

#: messages kept per job
MAX_MESSAGES = 50


@dataclass
class Job:
    """One piece of queued work and what became of it.

    Attributes:
        id: random hex id.
        op: the operation name (or ``rerun``/``compare``).
        config: the JSON config it was started with.
        status: ``queued``, ``running``, ``done``, ``failed`` or ``cancelled``.
        progress: the last bar step ``{"desc", "n", "total"}``; ``forwards`` counts model forward passes.
        messages: the last progress messages.
        error: a one-line error (never a traceback).
        result: the :class:`~uncover.core.results.Result`, once done.
        files: names of the saved files in the results folder (``result``, ``report``).
        reverted: for weight-changing operations, whether the change was undone.
    """

    id: str
    op: str
    config: dict[str, Any]
    status: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    forwards: int = 0
    messages: list[str] = field(default_factory=list)
    error: str | None = None
    result: Any = None
    files: dict[str, str] = field(default_factory=dict)
    changes_weights: bool = False
    reverted: bool = False
    fingerprint_after: str | None = None
    control: Progress = field(default_factory=lambda: Progress(enabled=False))

    def listen(self, event: str, payload: Any) -> None:
        """The :class:`Progress` listener: keep the last step and messages."""
        if event == "step":
            self.progress = dict(payload)
        elif event == "message":
            self.messages = [*self.messages, str(payload)][-MAX_MESSAGES:]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no result body)."""
        prov = getattr(self.result, "provenance", None)
        end = self.finished or time.time()
        return {
            "id": self.id,
            "op": self.op,
            "config": self.config,
            "status": self.status,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "seconds": round(end - self.started, 3) if self.started else None,
            "progress": self.progress,
            "forwards": self.forwards,
            "messages": self.messages,
            "error": self.error,
            "files": self.files,
            "changes_weights": self.changes_weights,
            "reverted": self.reverted,
            "provenance": prov.to_dict() if prov is not None else None,
            "title": getattr(self.result, "title", None) if self.result is not None else None,
        }


def new_id() -> str:
    """A random job id: 12 hex digits (also safe as a file name).

    >>> len(new_id()), new_id().isalnum()
    (12, True)
    """
    return secrets.token_hex(6)


def error_line(e: BaseException) -> str:
    """One line for the page: an uncover error's message, else the type and first line (no traceback).

    >>> error_line(ValueError("bad\\nsecond line"))
    'ValueError: bad'
    """
    first = (str(e).strip().splitlines() or [""])[0][:400]
    return first if isinstance(e, UncoverError) else f"{type(e).__name__}: {first}"


class Worker:
    """A single worker thread (a one-thread executor) shared by every request that needs the model.

    ``jobs`` holds every job of this server, oldest first.

    >>> w = Worker(); w.call(lambda: 6 * 7)
    42
    >>> w.close()
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uncover-worker")
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._thread_id: int | None = None
        self._pool.submit(self._remember_thread).result()

    def _remember_thread(self) -> None:
        self._thread_id = threading.get_ident()

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn`` on the worker thread after the queued work; wait for its value (or its exception)."""
        return self.later(fn).result(timeout=timeout)

    def later(self, fn: Callable[[], Any]) -> Future:
        """Queue ``fn`` on the worker thread (after the queued work); its future."""
        return self._pool.submit(fn)

    def submit(
        self, job: Job, fn: Callable[[Progress], Any], model: Any = None, on_done: Callable[[Job], None] | None = None
    ) -> Future:
        """Queue ``job``: ``fn(progress)`` makes its result; ``model`` (a HookedModel) gets a cancel check."""
        with self._lock:
            self.jobs[job.id] = job
        job.control = Progress(enabled=False, listener=job.listen)
        return self._pool.submit(self._run, job, fn, model, on_done)

    def _run(self, job: Job, fn: Callable[[Progress], Any], model: Any, on_done: Callable[[Job], None] | None) -> None:
        if job.control.cancelled:
            job.status, job.finished = "cancelled", time.time()
            return
        job.status, job.started = "running", time.time()

        def check(*_: Any) -> None:
            job.control.check()
            if threading.get_ident() == self._thread_id:
                job.forwards += 1

        def check_worker(*_: Any) -> None:  # global hook: other threads' modules are not ours to stop
            if threading.get_ident() == self._thread_id:
                job.control.check()

        handle = (
            model.model.register_forward_pre_hook(check)
            if model is not None
            else torch.nn.modules.module.register_module_forward_pre_hook(check_worker)
        )
        status = "running"
        try:
            job.result = fn(job.control)
            status = "done"
        except Cancelled:
            status = "cancelled"
        except Exception as e:  # the job fails; the server goes on
            log.exception("job %s (%s) failed", job.id, job.op)
            status, job.error = "failed", error_line(e)
        finally:
            handle.remove()
        if on_done is not None and status == "done":
            try:  # the files are written before the page sees "done"
                on_done(job)
            except Exception as e:
                log.exception("saving job %s failed", job.id)
                job.error = f"the result could not be saved: {error_line(e)}"
        job.finished = time.time()
        job.status = status

    def cancel(self, job: Job) -> None:
        """Ask ``job`` to stop (at once if queued, at its next step or forward pass if running)."""
        job.control.cancel()
        if job.status == "queued":
            job.status, job.finished = "cancelled", time.time()

    def close(self) -> None:
        """Cancel what is queued or running and stop the thread."""
        for job in list(self.jobs.values()):
            if job.status in ("queued", "running"):
                self.cancel(job)
        self._pool.shutdown(wait=True, cancel_futures=True)
