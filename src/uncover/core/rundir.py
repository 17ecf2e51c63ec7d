"""Run directories of resumable training (SAEs, transcoders ...): never overwrite or mix runs by accident.

A run directory holds ``run.json`` (the settings the run was started with) next to its
checkpoints and outputs. :func:`resolve_run` decides, before any work:

- a new run into a folder that already holds a run is refused unless ``overwrite``;
- ``resume`` continues with the stored settings: a setting left at its default takes the stored
  value, and one given explicitly with another value is refused, listing every difference.

:func:`begin_run` then, when the run starts, clears an overwritten run's files and records the settings
(a resumed run that has no record yet, from an older version, gets one, so its next resume is checked too).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from uncover.core.errors import UsageError

RUN_FILE = "run.json"


def stored_settings(out: Path) -> dict[str, Any] | None:
    """The settings recorded in ``out/run.json``, or ``None`` (no record: a new folder or an older run)."""
    path = Path(out) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["settings"]
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is damaged ({e}); remove it or use another run directory") from None


def resolve_run(out: Path, settings: dict[str, Any], defaults: dict[str, Any], *, resume: bool, overwrite: bool,
                holds_run: bool, owner: str) -> dict[str, Any]:
    """The settings to use for a run in ``out``; refuses mixing runs (see the module docstring).

    ``holds_run``: whether ``out`` already holds a run's files (a checkpoint or a result).

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> start_run(out, {"hook": "blocks.3.hook_resid_post", "k": 32}, [])
    >>> resolve_run(out, {"hook": "blocks.15.hook_resid_post", "k": 32}, {"hook": "blocks.15.hook_resid_post"},
    ...             resume=True, overwrite=False, holds_run=True, owner="demo")
    {'hook': 'blocks.3.hook_resid_post', 'k': 32}
    >>> resolve_run(out, {"hook": "blocks.15.hook_resid_post", "k": 8}, {"hook": "blocks.15.hook_resid_post", "k": 32},
    ...             resume=True, overwrite=False, holds_run=True, owner="demo")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: demo: the run in ... was started with other settings: k 32 (run) vs 8 (now); \
resume without them (the run's are used), or start a new run in another folder
    """
    stored = stored_settings(out)
    if resume and not holds_run and stored is None:
        raise UsageError(f"{owner}: resume (--resume): {out} holds no run to continue; run without --resume first")
    if not resume:
        if (holds_run or stored is not None) and not overwrite:
            raise UsageError(f"{owner}: {out} already holds a run; --resume to continue it, --overwrite to replace "
                             "it, or choose another folder")
        return settings
    if stored is None:
        return settings
    differ = {k: (stored[k], v) for k, v in settings.items()
              if k in stored and stored[k] != v and v != defaults.get(k, object())}
    if differ:
        listed = ", ".join(f"{k} {a!r} (run) vs {b!r} (now)" for k, (a, b) in differ.items())
        raise UsageError(f"{owner}: the run in {out} was started with other settings: {listed}; resume without "
                         "them (the run's are used), or start a new run in another folder")
    return {**settings, **{k: v for k, v in stored.items() if k in settings}}


def start_run(out: Path, settings: dict[str, Any], clear: Iterable[str]) -> None:
    """Remove ``clear`` (files or folders of an overwritten run) from ``out`` and record ``settings``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in clear:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (out / RUN_FILE).write_text(json.dumps({"settings": settings}, indent=1), encoding="utf-8")


def begin_run(out: Path, settings: dict[str, Any], clear: Iterable[str], *, resume: bool) -> None:
    """Start (or continue) the run in ``out``: a new run clears ``clear`` and records ``settings``
    (:func:`start_run`); a resumed run without ``run.json`` gets one, so a later resume is checked against it.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> begin_run(out, {"k": 32}, [], resume=True); stored_settings(out)
    {'k': 32}
    >>> begin_run(out, {"k": 8}, [], resume=True); stored_settings(out)  # a record is never replaced by a resume
    {'k': 32}
    """
    if not resume:
        start_run(out, settings, clear)
    elif stored_settings(out) is None:
        start_run(out, settings, [])
