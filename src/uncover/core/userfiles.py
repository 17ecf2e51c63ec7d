"""Reading the files a user hands over: data sets, pair files, saved artifacts (configs and tensors).

One place decides what a broken file is and says so in one line that names the file, what is wrong
with it and a fix: missing, a folder, unreadable, not UTF-8 (a binary file), holding NUL bytes, not
JSON, JSON of the wrong shape, a truncated or damaged safetensors file, tensors that are not
floating point. Readers of user files go through here, so no ``UnicodeDecodeError``,
``JSONDecodeError``, ``SafetensorError`` or ``KeyError`` reaches the user as a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from uncover.core.errors import UsageError


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of ``path``; any file that is not readable text is a :class:`UsageError`.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as f:
    ...     _ = f.write(bytes(range(256)))
    >>> read_text(f.name, "corpus")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: corpus /...txt is not UTF-8 text (byte 128: invalid start byte): a binary file?...
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{what} {p} does not exist")
    if p.is_dir():
        raise UsageError(f"{what} {p} is a folder; give a file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {p} is not UTF-8 text (byte {e.start}: {e.reason}): a binary file? "
                         "Give a text file") from None
    except OSError as e:
        raise UsageError(f"{what} {p} cannot be read ({e.strerror or e})") from None
    if "\x00" in text:
        raise UsageError(f"{what} {p} holds NUL bytes: binary data, not text; give a text file")
    return text


def parse_json(text: str, where: str) -> Any:
    """``json.loads`` whose failure names ``where`` (a file, a file:line, a metadata field) and the position.

    >>> parse_json("[1, 2", "cfg.json")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: cfg.json: not JSON (line 1, column 6: Expecting ',' delimiter)
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{where}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"{where}: not JSON ({e})") from None


def read_json(path: str | os.PathLike, what: str = "file", *, keys: Iterable[str] = (), obj: bool = False) -> Any:
    """The JSON value in ``path``; with ``obj``, an object; with ``keys``, an object that has every one of them.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    ...     _ = f.write('{"d_in": 4}')
    >>> read_json(f.name, "SAE config", keys=["d_in", "d_sae"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: SAE config /...json: missing field(s) d_sae (it has: d_in)
    """
    p = Path(path).expanduser()
    data = parse_json(read_text(p, what), f"{what} {p}")
    keys = list(keys)
    if keys or obj:
        require_fields(data, keys, f"{what} {p}")
    return data


def require_fields(data: Any, keys: Iterable[str], where: str) -> dict[str, Any]:
    """``data`` as a JSON object holding every one of ``keys``, else a :class:`UsageError` naming the missing ones.

    >>> require_fields([1, 2], ["a"], "pairs.jsonl:3")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: pairs.jsonl:3: must be a JSON object with the field(s) a, not a list
    """
    keys = list(keys)
    if not isinstance(data, dict):
        raise UsageError(f"{where}: must be a JSON object" + (f" with the field(s) {', '.join(keys)}" if keys else "")
                         + f", not a {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        has = ", ".join(map(str, data)) or "none"
        raise UsageError(f"{where}: missing field(s) {', '.join(missing)} (it has: {has})")
    return data


def load_tensors(path: str | os.PathLike, what: str = "file", *, floating: bool = True) -> dict[str, Any]:
    """The tensors of a safetensors file; a truncated or damaged file, or (``floating``) tensors that are not
    floating point or hold NaN or infinite values, refused.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False) as f:
    ...     _ = f.write(b"\\x08\\x00\\x00\\x00\\x00\\x00\\x00\\x00{}")
    >>> load_tensors(f.name, "SAE weights")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: SAE weights /...safetensors is not a readable safetensors file (...)...
    """
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"{what} {p} does not exist" if not p.exists() else f"{what} {p} is a folder; give a file")
    try:
        tensors = load_file(str(p))
    except Exception as e:  # safetensors raises its own error types for bad headers and short files
        raise UsageError(f"{what} {p} is not a readable safetensors file ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:120]}): truncated or damaged? Save it again") from None
    if floating:
        ints = [f"{k} ({v.dtype})" for k, v in tensors.items() if not v.is_floating_point()]
        if ints:
            raise UsageError(f"{what} {p}: {', '.join(ints[:3])} not floating point; weights must be float tensors")
        bad = [k for k, v in tensors.items() if not bool(v.isfinite().all())]
        if bad:
            raise UsageError(f"{what} {p}: {', '.join(bad[:3])} hold(s) NaN or infinite values; the file is damaged "
                             "or its training diverged")
    return tensors


@contextlib.contextmanager
def fields_from(where: str) -> Iterator[None]:
    """Turn a missing or malformed field met while building an object from a file's JSON into one usage error.

    >>> with fields_from("cfg.json"):
    ...     {"d_in": 4}["d_sae"]
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: cfg.json: the field 'd_sae' is missing
    """
    try:
        yield
    except UsageError:
        raise
    except KeyError as e:
        raise UsageError(f"{where}: the field {e.args[0]!r} is missing") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise UsageError(f"{where}: a field is malformed ({type(e).__name__}: {' '.join(str(e).split())[:150]})") \
            from None
