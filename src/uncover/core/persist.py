"""Saving and loading results: one safetensors file, tensors bit-exact, the rest as JSON.

The file's tensors are the result's tensors; its metadata holds ``format``
(``uncover.result``), ``schema`` (:data:`SCHEMA`), the result class and the JSON tree of
every other field and of the provenance. Files are written to a temporary name and renamed,
so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from uncover.core.codec import Decoder, Encoder, _qualname, resolve_class
from uncover.core.config import check_writable
from uncover.core.errors import UncoverError, UsageError

if TYPE_CHECKING:
    from uncover.core.results import Result

FORMAT = "uncover.result"
SCHEMA = 1


def atomic_write(path: Path, write: callable) -> Path:  # type: ignore[valid-type]
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (same folder).

    >>> import tempfile
    >>> p = atomic_write(Path(tempfile.mkdtemp()) / "a.txt", lambda tmp: tmp.write_text("done"))
    >>> p.read_text(), [f.name for f in p.parent.iterdir()]
    ('done', ['a.txt'])
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_result(result: Result, path: str | os.PathLike) -> Path:
    """Save ``result`` (every field, and its provenance) to one safetensors file.

    >>> import uncover as uc, tempfile, os
    >>> r = uc.run("lens", model, prompt="The Eiffel Tower is in the city of")
    >>> p = r.save(os.path.join(tempfile.mkdtemp(), "lens.safetensors"))
    >>> uc.load_result(p).top_probs.equal(r.top_probs)
    True
    """
    from safetensors.torch import save_file

    path = Path(path)
    check_writable(path, what="result file")
    enc = Encoder()
    body = enc._dataclass(result)
    prov = getattr(result, "provenance", None)
    meta = {"format": FORMAT, "schema": str(SCHEMA), "kind": _qualname(type(result)),
            "body": json.dumps(body), "provenance": json.dumps(prov.to_dict() if prov is not None else None)}
    return atomic_write(path, lambda tmp: save_file(enc.tensors, str(tmp), metadata=meta))


def load_result(path: str | os.PathLike) -> Result:
    """Load a result saved by :meth:`Result.save`; a file that is not one says what it is instead.

    >>> load_result("no-such-result.safetensors")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: no result file at no-such-result.safetensors
    """
    from safetensors import SafetensorError, safe_open

    from uncover.core.provenance import Provenance

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no result file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable result file (safetensors: {str(e).splitlines()[0]})") from None
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path} is a safetensors file but not an uncover result (no format={FORMAT} metadata)")
    schema = int(meta.get("schema", "0"))
    if schema > SCHEMA:
        raise UncoverError(f"{path} was written by a newer uncover (result schema {schema}; this version reads "
                           f"up to {SCHEMA}): upgrade uncover")
    try:
        body, prov = json.loads(meta["body"]), json.loads(meta.get("provenance", "null"))
    except (KeyError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: the result's JSON is damaged ({e})") from None
    cls = resolve_class(meta["kind"])
    result = Decoder(tensors)._dataclass(body)
    if not isinstance(result, cls):
        raise UncoverError(f"{path}: expected a {cls.__name__}")
    result.provenance = Provenance.from_dict(prov) if prov else None
    return result
