"""Where training metrics go: ``metrics.csv``, ``metrics.jsonl`` and TensorBoard.

One row per logged step (``step`` and the run's metrics: an SAE's ``loss``, ``mse``, ``fve``,
``l0`` ...; a grokking run's ``train_loss``, ``test_acc`` ...). Used by the SAE and grokking trainers.
The CSV and JSONL files live in the run directory; the same scalars go to TensorBoard event
files (through ``tensorboardX``, the optional extra ``uncover[tensorboard]``) under the tag
``train/<name>`` at the row's step. On resume from a checkpoint taken at step ``s``, rows
with ``step >= s`` are dropped from the CSV/JSONL and the TensorBoard writer starts with a
purge marker at ``s`` (TensorBoard's own convention; ``s = 0`` for a fresh run, which hides
the events of an earlier run in the same directory), so every view shows one clean curve.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from uncover.core.errors import UncoverError

TB_PREFIX = "train/"


def tensorboard_dir(tensorboard: str | Path | bool | None, out: Path | None) -> Path | None:
    """The TensorBoard log directory asked for: a path, ``True`` (``out/tensorboard``) or none.

    >>> tensorboard_dir(True, Path("run")).as_posix(), tensorboard_dir(None, None)
    ('run/tensorboard', None)
    """
    if tensorboard is None or tensorboard is False:
        return None
    if tensorboard is True:
        if out is None:
            raise UncoverError("tensorboard=True writes to out_dir/tensorboard and needs out_dir; "
                               "pass out_dir or a directory: tensorboard='runs/tb'")
        return out / "tensorboard"
    return Path(tensorboard)


def summary_writer(logdir: Path, purge_step: int | None = None) -> Any:
    """A ``tensorboardX.SummaryWriter`` on ``logdir``; a clear error when the package is missing.

    >>> w = summary_writer(tmp / "tb")
    >>> w.close()
    """
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise UncoverError("TensorBoard logging needs the tensorboardX package: pip install uncover[tensorboard] "
                           "(or pip install tensorboardX); or train without tensorboard=") from e
    logdir.mkdir(parents=True, exist_ok=True)
    # tensorboardX names files by the second: a unique suffix keeps a quick resume from overwriting its crash's file
    suffix = f".{os.getpid()}.{time.time_ns()}"
    return SummaryWriter(logdir=str(logdir), purge_step=purge_step, flush_secs=30, filename_suffix=suffix)


class MetricsLog:
    """Collects metric rows and writes them to CSV/JSONL in ``out`` and to TensorBoard.

    ``start`` is the first step not yet logged: on ``resume`` the rows already on disk with
    ``step < start`` are kept (and returned in :attr:`rows`), later ones dropped.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     log = MetricsLog(Path(d), tensorboard=None, start=0, resume=False)
    ...     log.write({"step": 0, "loss": 1.5})
    ...     log.close()
    ...     (Path(d) / "metrics.jsonl").read_text()
    '{"step": 0, "loss": 1.5}\\n'
    """

    def __init__(self, out: Path | None, tensorboard: str | Path | bool | None = None, start: int = 0,
                 resume: bool = False):
        self.out = out
        self.rows: list[dict[str, float]] = []
        tb = tensorboard_dir(tensorboard, out)
        # a purge marker at ``start`` hides older events at later steps (a crashed run's, or a previous run's)
        self.writer = summary_writer(tb, purge_step=start) if tb is not None else None
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        jsonl = out / "metrics.jsonl"
        if resume and jsonl.is_file():
            rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["step"] < start]
            jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
            write_csv(out / "metrics.csv", self.rows)
        elif not resume:
            for f in ("metrics.csv", "metrics.jsonl"):
                (out / f).unlink(missing_ok=True)

    def write(self, row: dict[str, float]) -> None:
        """Append one row (it must have ``step``) to every destination."""
        self.rows.append(row)
        if self.out is not None:
            with (self.out / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            write_csv(self.out / "metrics.csv", self.rows)
        if self.writer is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k != "step":
                    self.writer.add_scalar(TB_PREFIX + k, float(v), step)

    def flush(self) -> None:
        """Push buffered TensorBoard events to disk (called at checkpoints)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    """Write ``rows`` to ``path`` as CSV with the union of their keys as columns.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_csv(Path(d) / "m.csv", [{"step": 0}, {"step": 1, "aux": 2.0}])
    ...     (Path(d) / "m.csv").read_text().splitlines()
    ['step,aux', '0,', '1,2.0']
    """
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
