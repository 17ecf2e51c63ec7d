"""The local web workbench (``uncover serve``): every operation in a browser, offline, one model per server.

:func:`create_app` builds the application around a loaded model; :func:`serve` loads a model, prints the
local URL (it carries the launch's random token) and runs it under uvicorn on 127.0.0.1 unless another
host is asked for, with a warning.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

from uncover.serve.app import create_app
from uncover.serve.security import is_loopback

__all__ = ["create_app", "serve", "url"]


def url(host: str, port: int, token: str) -> str:
    """The URL the server prints: the page, with the token.

    >>> url("127.0.0.1", 8765, "abc")
    'http://127.0.0.1:8765/?token=abc'
    """
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/?token={token}"


def serve(
    model: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    results: str | Path = "uncover-results",
    device: str | None = None,
    dtype: str | None = None,
    loaded: Any = None,
) -> None:
    """Load ``model`` (default: the embedded one), print the URL and serve until interrupted.

    >>> serve("no/such/model")  # doctest: +SKIP
    """
    import uvicorn

    from uncover.hooks.hooked import load

    warn = not is_loopback(host)
    if warn:
        print(
            f"uncover: warning: serving on {host}: other machines can reach this workbench; anyone with the "
            "URL (it carries the token) can run operations on this model and write into the results folder",
            file=sys.stderr,
        )
    hooked = loaded if loaded is not None else load(model, device=device, dtype=dtype)
    token = secrets.token_urlsafe(24)
    app = create_app(hooked, results, token=token, hosts={host})
    print(f"uncover: workbench for {hooked.name} at {url(host, port, token)}", flush=True)
    print(f"uncover: results folder {Path(results).resolve()}; Ctrl-C stops the server", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        app.state.server.worker.close()
