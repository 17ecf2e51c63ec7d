"""Activation shards: one safetensors file per shard of token blocks, written atomically.

A shard holds, for each hook, the value at every kept position of its token blocks as rows
``acts.<hook>: [rows, features]`` (the axes after the position flattened, so per-head values are
one vector per position), and the blocks themselves, ``tokens: [blocks, block_len]``. Row ``r``
is block ``r // (block_len - skip_first)``, position ``skip_first + r % (block_len - skip_first)``.
:func:`compute_shard` is a pure function of the model's weights and the task, which is what
makes the local and the Ray engine write the same bytes. Each file is written to a temporary
name and renamed into place, so a reader never sees half a shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError, UsageError
from uncover.core.names import HookName

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

FORMAT = "uncover-shard"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_NOT_PER_POSITION = ("hook_pattern", "hook_attn_scores")


def shard_name(index: int) -> str:
    """The file name of shard ``index``.

    >>> shard_name(3)
    'shard_00003.safetensors'
    """
    return f"shard_{index:05d}.safetensors"


def tokens_digest(blocks: torch.Tensor) -> str:
    """A 16-hex-digit hash of token blocks ``[blocks, block_len]`` (a resumed job checks its plan with it).

    >>> tokens_digest(torch.tensor([[1, 2]])) == tokens_digest(torch.tensor([[1, 2]]))
    True
    """
    t = blocks.to(torch.int64).contiguous()
    return hashlib.blake2b(f"{tuple(t.shape)}|".encode() + t.numpy().tobytes(), digest_size=8).hexdigest()


def check_hooks(model: HookedModel, hooks: list[str]) -> list[str]:
    """The hook names, checked: known to the model, and with one value per position (no attention patterns).

    >>> check_hooks(model, ["blocks.0.attn.hook_pattern"])
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: blocks.0.attn.hook_pattern has one value per pair of positions, not per \
position; harvest hook_z, hook_result, residual, attention or MLP outputs instead
    """
    names = model.select_names(hooks)
    for n in names:
        if n != "logits" and HookName.parse(n).leaf in _NOT_PER_POSITION:
            raise UsageError(
                f"{n} has one value per pair of positions, not per position; harvest hook_z, "
                "hook_result, residual, attention or MLP outputs instead"
            )
    return names


@dataclass(frozen=True)
class ShardTask:
    """One shard's work: its token blocks and the harvest settings (all a worker needs besides the model).

    Attributes:
        index: the shard number.
        blocks: ``[blocks, block_len]`` token ids.
        hooks: hook names.
        skip_first: leading positions of each block not kept (attention-sink outliers).
        dtype: stored dtype name (``float32``, ``float16``, ``bfloat16``).
        batch_size: blocks per forward pass.
        out: the shard directory (seen by every worker: a shared filesystem on a cluster).
    """

    index: int
    blocks: torch.Tensor
    hooks: tuple[str, ...]
    skip_first: int
    dtype: str
    batch_size: int
    out: str


@torch.no_grad()
def shard_values(model: HookedModel, task: ShardTask) -> dict[str, torch.Tensor]:
    """``hook -> [rows, features]`` for the task's blocks (the shard's content, not written).

    >>> t = ShardTask(0, model.to_tokens(["The cat sat on the mat"]), ("blocks.0.hook_resid_post",), 1, "float32",
    ...               8, ".")
    >>> shard_values(model, t)["blocks.0.hook_resid_post"].shape
    torch.Size([5, 576])
    """
    from uncover.hooks.harvest import harvest

    dtype = DTYPES[task.dtype]
    out: dict[str, list[torch.Tensor]] = {h: [] for h in task.hooks}
    for _, got in harvest(model, task.blocks, list(task.hooks), batch_size=task.batch_size, dtype=None, device="cpu"):
        for hook, v in got.items():  # [batch, pos, ...] -> [batch * kept positions, features]
            v = v.reshape(v.shape[0], v.shape[1], -1)[:, task.skip_first :]
            out[hook].append(v.reshape(-1, v.shape[-1]).to(dtype))
    return {h: torch.cat(vs) for h, vs in out.items()}


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_digest(path: Path) -> str:
    """A 16-hex-digit hash of a file's bytes.

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "a.bin"; _ = f.write_bytes(b"abc")
    >>> len(file_digest(f))
    16
    """
    h = hashlib.blake2b(digest_size=8)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def compute_shard(model: HookedModel, task: ShardTask) -> dict[str, Any]:
    """Harvest one shard and write it (atomically); return its manifest record (status ``done``).

    One forward pass per batch serves every hook (it stops after the last one); memory holds one shard.
    The file's bytes depend only on the weights and the task.

    >>> import tempfile
    >>> t = ShardTask(0, model.to_tokens(["The cat sat on the mat"]), ("hook_embed",), 1, "float32", 8,
    ...               tempfile.mkdtemp())
    >>> rec = compute_shard(model, t)
    >>> rec["file"], rec["rows"], rec["status"]
    ('shard_00000.safetensors', 5, 'done')
    """
    t0 = time.perf_counter()
    values = shard_values(model, task)
    path = Path(task.out) / shard_name(task.index)
    tensors = {f"acts.{h}": v.contiguous() for h, v in values.items()}
    tensors["tokens"] = task.blocks.to(torch.int64).contiguous()
    # one metadata key: safetensors orders several keys differently from one write to the next
    meta = {
        "uncover": json.dumps(
            {"format": FORMAT, "index": task.index, "hooks": list(task.hooks), "skip_first": task.skip_first},
            sort_keys=True,
        )
    }
    _write_atomic(path, tensors, meta)
    rows = len(next(iter(values.values())))
    return {
        "index": task.index,
        "file": path.name,
        "status": "done",
        "blocks": int(task.blocks.shape[0]),
        "tokens": int(task.blocks.numel()),
        "rows": rows,
        "tokens_digest": tokens_digest(task.blocks),
        "digest": file_digest(path),
        "seconds": round(time.perf_counter() - t0, 4),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def read_shard(path: str | Path, hooks: list[str] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(hook -> [rows, features], tokens [blocks, block_len])`` of one shard file (``hooks``: only these).

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> _ = compute_shard(model, ShardTask(0, model.to_tokens(["The cat sat"]), ("hook_embed",), 0, "float32", 8, out))
    >>> acts, tokens = read_shard(f"{out}/shard_00000.safetensors")
    >>> acts["hook_embed"].shape, tokens.shape
    (torch.Size([3, 576]), torch.Size([1, 3]))
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("uncover", "{}"))
            if meta.get("format") != FORMAT:
                raise UncoverError(f"{path}: not an uncover activation shard (format {meta.get('format')!r})")
            stored = meta["hooks"]
            wanted = stored if hooks is None else hooks
            missing = [h for h in wanted if h not in stored]
            if missing:
                raise UsageError(f"{path}: no values for {', '.join(missing)}; harvested: {', '.join(stored)}")
            return {h: f.get_tensor(f"acts.{h}") for h in wanted}, f.get_tensor("tokens")
    except SafetensorError as e:
        raise UncoverError(f"{path}: broken shard file ({e}); rerun the harvest to rewrite it") from None
