"""The workbench's safety rules, as pure functions and one ASGI middleware.

- The server binds 127.0.0.1 unless told otherwise (:func:`is_loopback` decides whether to warn).
- Every API call carries the launch's random token (header ``X-Uncover-Token`` or ``?token=``).
- Requests name an allowed host (no DNS rebinding); state-changing calls come from the page's own origin.
- Bodies and texts are bounded; a path from the browser is a name inside the server's results folder,
  never anywhere else (:func:`inside`, :func:`confine_config`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from uncover.core.config import Config, fields_of, type_name
from uncover.core.errors import UsageError

#: the header that carries the launch token
TOKEN_HEADER = "x-uncover-token"
#: largest request body in bytes
MAX_BODY = 256 * 1024
#: longest text field (prompt) in characters
MAX_TEXT = 4000
#: most items in a list field
MAX_ITEMS = 256
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
#: a built-in data name (``sentiment``, ``mit-shuffled``) rather than a file
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_ok(given: str | None, token: str) -> bool:
    """Constant-time comparison of a request's token with the launch token.

    >>> token_ok("abc", "abc"), token_ok(None, "abc"), token_ok("abd", "abc")
    (True, False, False)
    """
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def host_ok(host_header: str | None, allowed: set[str]) -> bool:
    """Whether the ``Host`` header names an allowed host (its port is not checked).

    >>> host_ok("127.0.0.1:8765", {"127.0.0.1"}), host_ok("evil.example:8765", {"127.0.0.1"})
    (True, False)
    """
    if not host_header:
        return False
    name = urlsplit(f"//{host_header}").hostname or ""
    return name in {h.strip("[]") for h in allowed}


def origin_ok(origin: str | None, host_header: str | None) -> bool:
    """A state-changing call must come from the page itself: no ``Origin`` (not a browser) or the same host.

    >>> origin_ok("http://127.0.0.1:8765", "127.0.0.1:8765"), origin_ok("http://evil.example", "127.0.0.1:8765")
    (True, False)
    >>> origin_ok(None, "127.0.0.1:8765"), origin_ok("null", "127.0.0.1:8765")
    (True, False)
    """
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == (host_header or "")


def inside(root: Path, name: str) -> Path:
    """``root / name`` if it stays inside ``root`` (no ``..``, no links out, absolute only inside); else UsageError.

    >>> inside(Path("/srv/results"), "lens.safetensors").as_posix()
    '/srv/results/lens.safetensors'
    >>> inside(Path("/srv/results"), "../etc/passwd")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: '../etc/passwd' is outside the results folder; give a name inside it
    """
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise UsageError(f"{name!r} is not a file name inside the results folder")
    p = Path(name)
    if ".." in p.parts:
        raise UsageError(f"{name!r} is outside the results folder; give a name inside it")
    root = root.resolve()
    full = (root / p).resolve()  # an absolute path stays itself: accepted only inside the folder
    if full != root and root not in full.parents:
        raise UsageError(f"{name!r} is outside the results folder; give a name inside it")
    return full


def _bounded_text(owner: str, name: str, v: Any) -> None:
    if isinstance(v, str) and len(v) > MAX_TEXT:
        raise UsageError(f"{owner}: {name} is {len(v)} characters; the workbench takes at most {MAX_TEXT}")
    if isinstance(v, list):
        if len(v) > MAX_ITEMS:
            raise UsageError(f"{owner}: {name} has {len(v)} items; the workbench takes at most {MAX_ITEMS}")
        for x in v:
            _bounded_text(owner, name, x)


def confine_config(cls: type[Config], data: Any, root: Path) -> dict[str, Any]:
    """Browser JSON -> config fields: unknown fields refused, texts bounded, paths confined to ``root``.

    Path fields are names inside the results folder (a default path too); a text field that may name a file
    (its help says "file") is a built-in name or a file inside the folder.

    >>> from uncover.lenses.ops import LensConfig
    >>> confine_config(LensConfig, {"prompt": "Hi", "tuned": "/etc/passwd"}, Path("/tmp"))
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: '/etc/passwd' is outside the results folder; give a name inside it
    """
    owner = cls.__name__
    if not isinstance(data, dict):
        raise UsageError(f"{owner}: the config must be a JSON object of fields, got {type(data).__name__}")
    names = {f.name: f for f in fields_of(cls)}
    for k in data:
        if k not in names:
            raise UsageError(f"{owner}: unknown field {k!r}; valid: {', '.join(names)}")
    out: dict[str, Any] = {}
    for k, f in names.items():
        if k not in data:
            if not f.required and isinstance(f.default, Path):  # a default file lands in the folder too
                out[k] = str(inside(root, str(f.default)))
            continue
        v = data[k]
        _bounded_text(owner, k, v)
        kind = type_name(f.type)
        if v is not None and kind.startswith("path"):
            v = str(inside(root, v)) if isinstance(v, str) else v
        elif isinstance(v, str) and kind == "str" and "file" in f.spec.help.lower() and not _NAME.match(v):
            v = str(inside(root, v))
        out[k] = v
    return out


class Guard:
    """ASGI middleware: allowed hosts, the token on ``/api``, same-origin state changes, bounded bodies.

    Refusals are JSON ``{"error": ...}`` with 400 (bad host), 401 (token), 403 (origin) or 413 (body).
    """

    def __init__(self, app: Any, token: str, hosts: set[str], max_body: int = MAX_BODY) -> None:
        self.app, self.token, self.hosts, self.max_body = app, token, hosts, max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host")
        path = scope.get("path", "")
        if not host_ok(host, self.hosts):
            await _refuse(send, 400, "unknown host: open the workbench at the URL it printed")
            return
        if path.startswith("/api/"):
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = headers.get(TOKEN_HEADER) or (query.get("token") or [None])[0]
            if not token_ok(given, self.token):
                await _refuse(
                    send, 401, "missing or wrong token: open the URL the server printed (it carries ?token=...)"
                )
                return
        if scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS"):
            if not origin_ok(headers.get("origin"), host):
                await _refuse(send, 403, "cross-origin request refused")
                return
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await _refuse(send, 413, f"request body too large (at most {self.max_body} bytes)")
                return
            receive = _bounded(receive, self.max_body)
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    """A streamed body went over the limit."""


def _bounded(receive: Any, limit: int) -> Any:
    seen = 0

    async def wrapped() -> dict:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"request body too large (at most {limit} bytes)")
        return message

    return wrapped


async def _refuse(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
