"""The workbench's answers to failures: one JSON line with a status, never a traceback in the browser."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from uncover.core.errors import UncoverError, UsageError
from uncover.serve import server as server_module
from uncover.serve.jobs import error_line
from uncover.serve.security import BodyTooLarge

log = logging.getLogger("uncover.serve")


def install_error_handlers(app: FastAPI) -> None:
    """Every failure a route can meet becomes ``{"error": one line}`` with its status: 400 for bad input
    (:class:`UncoverError`), 404, 413 (body too large), 503 (model busy), 422, and 500 for anything else
    (logged with its traceback, never sent to the browser).

    >>> app = FastAPI()
    >>> install_error_handlers(app)
    >>> UncoverError in app.exception_handlers
    True
    """

    def err(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(UncoverError)
    async def _usage(request: Request, e: UncoverError) -> JSONResponse:
        return err(400, error_line(e))

    @app.exception_handler(LookupError)
    async def _missing(request: Request, e: LookupError) -> JSONResponse:
        return err(404, str(e.args[0]) if e.args else "not found")

    @app.exception_handler(BodyTooLarge)
    async def _large(request: Request, e: BodyTooLarge) -> JSONResponse:
        return err(413, str(e))

    @app.exception_handler(TimeoutError)
    async def _busy(request: Request, e: TimeoutError) -> JSONResponse:
        return err(
            503,
            f"the model is busy with queued work (waited {server_module.VIEW_TIMEOUT:.0f} s); try again later or "
            "cancel a job",
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        return err(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return err(422, "invalid request")

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("request %s failed", request.url.path)
        return err(500, f"internal error ({type(e).__name__}); the server's log has the details")


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty body); anything else is a :class:`UsageError` (400)."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise UsageError("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise UsageError("the request body must be a JSON object")
    return data
