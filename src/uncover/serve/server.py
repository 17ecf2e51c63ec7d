"""The state of one workbench server: the model, its single worker thread, the results folder, the token, SAEs.

:class:`Server` is what every route of :func:`uncover.serve.app.create_app` shares: job lookup, awaiting work on
the worker thread, saving a finished job's files, and the SAEs the features view has loaded.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from uncover.core.errors import UsageError
from uncover.serve import features
from uncover.serve.jobs import Job, Worker
from uncover.serve.security import inside

#: seconds a view (prompt, patch cell) may wait for the worker
VIEW_TIMEOUT = 300.0
_ID = re.compile(r"^[0-9a-f]{12}$")


class Server:
    """The state of one workbench: the model, the worker, the results folder, the token."""

    def __init__(self, model: Any, results: Path, token: str) -> None:
        self.model, self.results, self.token = model, results, token
        self.worker = Worker()
        self.applied: list[str] = []  # ids of weight-changing jobs not reverted, oldest first
        self.saes: dict[str, Any] = {}  # SAEs of the features view, by path ("" is the quick SAE)

    def sae(self, name: Any) -> Any:
        """The SAE at ``name`` (a folder inside the results folder; empty: the quick SAE), loaded once.

        Runs on the worker thread (the quick SAE may train on first use)."""
        from uncover.sae.quick import quick_sae
        from uncover.sae.sites import load_sae_dir

        if name is not None and not isinstance(name, str):
            raise UsageError(f"path must be a folder name in the results folder, got {name!r}")
        key = (name or "").strip()
        if key not in self.saes:
            sae = quick_sae(self.model, progress=False) if not key else load_sae_dir(inside(self.results, key))
            self.saes[key] = features.check_sae(self.model, sae.eval())
        return self.saes[key]

    def job(self, job_id: str) -> Job:
        if not _ID.match(job_id) or job_id not in self.worker.jobs:
            raise LookupError(f"no job {job_id!r}")
        return self.worker.jobs[job_id]

    async def call(self, fn: Any) -> Any:
        """Run ``fn`` on the worker thread (after queued work) and await its value."""
        return await asyncio.wait_for(asyncio.wrap_future(self.worker.later(fn)), VIEW_TIMEOUT)

    def save(self, job: Job) -> None:
        """Write a finished job's result file and HTML report into the results folder."""
        from uncover.ops.provenance import weights_fingerprint

        if job.changes_weights:
            self.applied.append(job.id)
            job.fingerprint_after = weights_fingerprint(self.model.model)
        if job.result is None:
            return
        path = self.results / f"{job.id}.safetensors"
        job.result.save(path)
        job.files["result"] = path.name
        html = self.results / f"{job.id}.html"
        job.result.to_html(html)
        job.files["report"] = html.name
