"""The workbench's web application: routes generated from the operation registry.

:func:`create_app` takes an already-loaded :class:`~uncover.hooks.hooked.HookedModel` (one model per
server) and a results folder. Every ``/api`` route needs the launch token; everything that touches the
model runs on the single worker thread (:mod:`uncover.serve.jobs`). Routes:

- ``GET /api/model``, ``GET /api/operations`` (each ``Operation.describe()``, config schema included);
- ``POST /api/jobs`` ``{"op", "config", "seed"}`` -> a job; ``GET /api/jobs`` (history, newest first),
  ``GET /api/jobs/{id}``, ``POST /api/jobs/{id}/cancel``, ``GET /api/jobs/{id}/result`` / ``figure`` /
  ``file`` / ``report``; ``POST /api/jobs/{id}/revert`` (weight edits), ``/rerun``, ``/cell`` (a cell of
  ``patch``, ``attribute``, ``path`` or ``trace``: ``{"index", "kind"}``), ``/trace`` (an edit's causal trace
  before and after), ``/generalisation`` (an edit's paraphrases and neighbours before and after:
  ``{"paraphrases", "neighbours", "true"}``), ``/graph`` (an attribution graph pruned at other thresholds:
  ``{"node_threshold", "edge_threshold"}``); ``POST /api/compare`` ``{"a", "b"}``;
  ``POST /api/open`` ``{"name"}`` (reopen a saved result);
- ``POST /api/prompt`` ``{"prompt", "answer", "wrong", "k", "lens_positions"}``: the prompt explorer;
- ``POST /api/features`` ``{"prompt", "path", "k"}``: SAE latents per token (``path``: an SAE or training run
  folder inside the results folder; none: the model's quick SAE). Steering or ablating one latent is the
  ``sae steer`` operation, started as a job like any other;
- ``GET /api/files`` and ``GET /api/files/{name}``: the results folder, and nothing outside it.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from uncover.core.errors import UsageError
from uncover.serve import cells, edits, features, prompt, views
from uncover.serve.errors import install_error_handlers, json_body
from uncover.serve.jobs import Job, new_id
from uncover.serve.security import LOOPBACK_NAMES, Guard, confine_config, inside
from uncover.serve.server import Server

STATIC = Path(__file__).parent / "static"


def create_app(
    model: Any, results: str | Path = "uncover-results", *, token: str | None = None, hosts: set[str] | None = None
) -> Any:
    """The FastAPI app of the workbench for ``model`` (a loaded HookedModel).

    ``results``: the server's folder (created); files the browser names are resolved inside it only.
    ``token``: the launch token (random when omitted; ``app.state.server.token``). ``hosts``: host names
    the app answers besides the loopback ones (the ``--host`` it binds).

    >>> app = create_app(model, "uncover-results", token="t0k3n")
    >>> app.state.server.token
    't0k3n'
    """
    root = Path(results).resolve()
    root.mkdir(parents=True, exist_ok=True)
    srv = Server(model, root, token or secrets.token_urlsafe(24))
    app = FastAPI(title="uncover workbench", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv
    app.add_middleware(Guard, token=srv.token, hosts={*LOOPBACK_NAMES, *(hosts or set())})

    install_error_handlers(app)

    # ---- pages -------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def index() -> Any:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}")
    async def static(name: str) -> Any:
        if name == "plotly.min.js":
            import plotly

            return FileResponse(
                Path(plotly.__file__).parent / "package_data" / "plotly.min.js", media_type="text/javascript"
            )
        if name not in {p.name for p in STATIC.iterdir()}:
            raise LookupError(f"no static file {name!r}")
        return FileResponse(STATIC / name)

    # ---- model and operations ----------------------------------------------------------------
    @app.get("/api/model")
    async def model_info() -> dict[str, Any]:
        from uncover.ops.provenance import weights_fingerprint

        c = model.cfg
        fp = await srv.call(lambda: weights_fingerprint(model.model))
        return {
            "name": model.name,
            "family": c.family,
            "n_layers": c.n_layers,
            "n_heads": c.n_heads,
            "d_model": c.d_model,
            "d_vocab": c.d_vocab,
            "fingerprint": fp,
            "applied": list(srv.applied),
        }

    @app.get("/api/operations")
    async def list_ops() -> list[dict[str, Any]]:
        from uncover.ops.registry import operations

        return [op.describe() for op in operations()]

    # ---- jobs --------------------------------------------------------------------------------
    @app.post("/api/jobs", status_code=202)
    async def start(request: Request) -> dict[str, Any]:
        from uncover.ops.registry import execute, get_operation

        data = await json_body(request)
        name = data.get("op")
        if not isinstance(name, str):
            raise UsageError('give the operation\'s name: {"op": "lens", "config": {...}}')
        op = get_operation(name)
        fields = confine_config(op.config, data.get("config", {}), root)
        seed = data.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise UsageError(f"seed must be an integer, got {seed!r}")
        config = op.config(**fields)
        if op.needs_model:
            config.check_model(model)
        job = Job(new_id(), op.name, config.to_dict(), changes_weights=op.changes_weights)

        def run(progress: Any) -> Any:
            snapshot = (
                {k: v.detach().clone() for k, v in model.model.state_dict().items()} if op.changes_weights else None
            )
            try:
                return execute(op, config, model if op.needs_model else None, progress=progress, seed=seed)
            except BaseException:
                if snapshot is not None:  # a failed edit leaves the weights as they were
                    model.model.load_state_dict(snapshot)
                raise

        srv.worker.submit(job, run, model if op.needs_model else None, on_done=srv.save)
        return job.to_dict()

    @app.get("/api/jobs")
    async def history() -> list[dict[str, Any]]:
        return [j.to_dict() for j in reversed(list(srv.worker.jobs.values()))]

    @app.get("/api/jobs/{job_id}")
    async def status(job_id: str) -> dict[str, Any]:
        return srv.job(job_id).to_dict()

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str) -> dict[str, Any]:
        job = srv.job(job_id)
        if job.status in ("queued", "running"):
            srv.worker.cancel(job)
        return job.to_dict()

    def finished(job_id: str) -> Job:
        job = srv.job(job_id)
        if job.status != "done" or job.result is None:
            raise HTTPException(409, f"job {job_id} is {job.status}; it has no result")
        return job

    @app.get("/api/jobs/{job_id}/result")
    async def result(job_id: str) -> dict[str, Any]:
        return {"job": (job := finished(job_id)).to_dict(), **views.result_view(job.result)}

    @app.get("/api/jobs/{job_id}/figure")
    async def figure(job_id: str) -> Response:
        return Response(views.figure_json(finished(job_id).result), media_type="application/json")

    def job_file(job_id: str, kind: str) -> Path:
        job = finished(job_id)
        if kind not in job.files:
            raise HTTPException(404, f"job {job_id} has no {kind} file")
        return inside(root, job.files[kind])

    @app.get("/api/jobs/{job_id}/file")
    async def download(job_id: str) -> Any:
        job = srv.job(job_id)
        return FileResponse(
            job_file(job_id, "result"),
            media_type="application/octet-stream",
            filename=f"{job.op.replace(' ', '-')}-{job.id}.safetensors",
        )

    @app.get("/api/jobs/{job_id}/report")
    async def report(job_id: str) -> Any:
        return FileResponse(job_file(job_id, "report"), media_type="text/html")

    @app.post("/api/jobs/{job_id}/revert")
    async def revert(job_id: str) -> dict[str, Any]:
        from uncover.ops.provenance import weights_fingerprint

        job = finished(job_id)
        if not job.changes_weights or not hasattr(job.result, "revert"):
            raise HTTPException(409, f"job {job_id} ({job.op}) did not change the weights")
        if job.reverted:
            raise HTTPException(409, f"job {job_id} is already reverted")
        if srv.applied and srv.applied[-1] != job_id:
            raise HTTPException(409, f"revert the later weight change {srv.applied[-1]} first")

        def undo() -> str:
            job.result.revert()
            return weights_fingerprint(model.model)

        fp = await srv.call(undo)
        job.reverted = True
        srv.applied.remove(job_id)
        return {**job.to_dict(), "fingerprint": fp}

    @app.post("/api/jobs/{job_id}/rerun", status_code=202)
    async def rerun(job_id: str) -> dict[str, Any]:
        from uncover.ops.registry import get_operation
        from uncover.ops.reproduce import rerun as rerun_

        original = finished(job_id)
        op = get_operation(original.op) if original.result.provenance else None
        if op is None:
            raise HTTPException(409, f"job {job_id}'s result has no provenance to rerun")
        confine_config(op.config, original.result.provenance.config, root)  # a reopened file's paths too
        job = Job(new_id(), f"rerun {op.name}", {"job": job_id})

        def run(progress: Any) -> Any:
            verdict, again = rerun_(original.result, model if op.needs_model else None, progress=progress)
            if op.changes_weights:
                again.revert()  # the rerun's own change is not kept
            return verdict

        srv.worker.submit(job, run, model if op.needs_model else None, on_done=srv.save)
        return job.to_dict()

    @app.post("/api/jobs/{job_id}/trace", status_code=202)
    async def trace(job_id: str) -> dict[str, Any]:
        """Causal trace of an edited fact before and after the edit (the edit is off for the first trace)."""
        from uncover.ops.registry import execute, get_operation
        from uncover.ops.reproduce import compare as compare_

        original = finished(job_id)
        if original.op != "edit" or original.reverted:
            raise HTTPException(409, f"job {job_id} is not an applied edit")
        if srv.applied and srv.applied[-1] != job_id:
            raise HTTPException(409, f"trace the latest edit {srv.applied[-1]} (edits stack)")
        req = get_operation("edit").config.from_dict(original.config)
        op = get_operation("trace")
        cfg = op.config(prompt=req.request().text, subject=req.subject, answer=req.target, kind="hidden")
        cfg.check_model(model)
        job = Job(new_id(), "trace before/after edit", {"edit": job_id, **cfg.to_dict()})
        e = original.result.edit

        def run(progress: Any) -> Any:
            e.revert()
            try:
                before = execute(op, cfg, model, progress=progress)
            finally:
                e.apply()  # the edit is back on, whatever happened
            return compare_(before, execute(op, cfg, model, progress=progress))

        srv.worker.submit(job, run, model, on_done=srv.save)
        return job.to_dict()

    @app.post("/api/jobs/{job_id}/generalisation")
    async def generalisation(job_id: str, request: Request) -> dict[str, Any]:
        """An applied edit's paraphrases and neighbourhood prompts, before (edit off) and after (back on)."""
        from uncover.ops.registry import get_operation

        original = finished(job_id)
        if original.op != "edit" or original.reverted:
            raise HTTPException(409, f"job {job_id} is not an applied edit")
        if srv.applied and srv.applied[-1] != job_id:
            raise HTTPException(409, f"evaluate the latest edit {srv.applied[-1]} (edits stack)")
        d = await json_body(request)
        cfg = get_operation("edit").config.from_dict(original.config)
        return await srv.call(
            lambda: edits.edit_generalisation(
                model, original.result, cfg, d.get("paraphrases"), d.get("neighbours"), d.get("true")
            )
        )

    @app.post("/api/compare", status_code=202)
    async def compare(request: Request) -> dict[str, Any]:
        from uncover.ops.reproduce import compare as compare_

        data = await json_body(request)
        a, b = finished(str(data.get("a"))), finished(str(data.get("b")))
        job = Job(new_id(), "compare", {"a": a.id, "b": b.id})
        compare_(a.result, b.result)  # a usage error (two operations) is refused before queueing
        srv.worker.submit(job, lambda progress: compare_(a.result, b.result), on_done=srv.save)
        return job.to_dict()

    @app.post("/api/open")
    async def reopen(request: Request) -> dict[str, Any]:
        from uncover.core.persist import load_result

        name = (await json_body(request)).get("name")
        path = inside(root, name)
        if not path.is_file():
            raise LookupError(f"no file {name!r} in the results folder")
        res = await srv.call(lambda: load_result(path))
        prov = res.provenance
        job = Job(
            new_id(),
            prov.operation if prov else type(res).__name__,
            dict(prov.config) if prov else {},
            status="done",
            result=res,
            files={"result": path.name},
        )
        job.started, job.finished = job.created, job.created
        srv.worker.jobs[job.id] = job
        return job.to_dict()

    @app.post("/api/jobs/{job_id}/cell")
    async def cell(job_id: str, request: Request) -> dict[str, Any]:
        from uncover.ops.registry import get_operation

        job = finished(job_id)
        kinds = {
            "patch": "PatchResult",
            "attribute": "AttributionResult",
            "path": "PathPatchResult",
            "trace": "CausalTraceResult",
        }
        if kinds.get(job.op) != type(job.result).__name__:
            raise HTTPException(409, f"job {job_id} is not a result of patch, attribute, path or trace")
        data = await json_body(request)
        index = data.get("index")
        config = get_operation(job.op).config.from_dict(job.config)
        if job.op == "path":
            return await srv.call(lambda: cells.path_cell(model, config, job.result, index))
        if job.op == "trace":
            kind = data.get("kind", next(iter(job.result.grids)))
            return await srv.call(lambda: cells.trace_cell(model, config, job.result, kind, index))
        return await srv.call(lambda: cells.patch_cell(model, config, job.result, index))

    @app.post("/api/jobs/{job_id}/graph")
    async def graph_route(job_id: str, request: Request) -> dict[str, Any]:
        """An attribution graph pruned at other node and edge thresholds (no model needed: off the worker)."""
        from uncover.serve.graph import graph_view

        job = finished(job_id)
        if type(job.result).__name__ != "AttributionGraph":
            raise HTTPException(409, f"job {job_id} is not a result of graph")
        d = await json_body(request)
        return await asyncio.to_thread(graph_view, job.result, d.get("node_threshold"), d.get("edge_threshold"))

    # ---- views -------------------------------------------------------------------------------
    @app.post("/api/prompt")
    async def prompt_route(request: Request) -> JSONResponse:
        data = await json_body(request)
        text = data.get("prompt")
        if isinstance(text, str) and len(text) > 4000:
            raise UsageError(f"prompt is {len(text)} characters; the workbench takes at most 4000")
        k = data.get("k", 10)
        where = data.get("lens_positions", "all")
        view = await srv.call(lambda: prompt.prompt_view(model, text, data.get("answer"), data.get("wrong"), k, where))
        return JSONResponse(view)  # already JSON-ready: skips the framework's walk over every number

    @app.post("/api/features")
    async def features_route(request: Request) -> dict[str, Any]:
        data = await json_body(request)
        return await srv.call(
            lambda: features.features_view(model, srv.sae(data.get("path")), data.get("prompt"), data.get("k", 5))
        )

    # ---- files -------------------------------------------------------------------------------
    @app.get("/api/files")
    async def files() -> list[dict[str, Any]]:
        return [
            {"name": p.relative_to(root).as_posix(), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*"))
            if p.is_file()
        ]

    @app.get("/api/files/{name:path}")
    async def file(name: str) -> Any:
        path = inside(root, name)
        if not path.is_file():
            raise LookupError(f"no file {name!r} in the results folder")
        return FileResponse(path, filename=path.name)

    return app
