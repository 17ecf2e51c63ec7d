"""Activation datasets: one vector per text at chosen hooks and positions, with labels.

The inputs of every probing, CCS and reading-vector technique. :func:`collect` runs the
model over texts in batches through the harvesting engine (:func:`uncover.hooks.harvest.harvest`:
a progress bar on stderr, each forward pass stopped after the last hook), which reduces each
hook's value over positions as it is computed (``where``: the last real token, the mean over
real tokens, a token span or one marked token per text, as position weights) and keeps only
the reduced vectors, so memory grows with ``n_texts × d`` rather than with sequence length.
:func:`collect_to_disk` writes safetensors shards (activations plus labels) as it goes and
holds one shard at a time; :func:`load` and :func:`iter_shards` read them back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import resid_name
from uncover.data.labelled import Labelled
from uncover.hooks.harvest import harvest

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

WHERE = ("last", "mean", "span", "mark")
"""Position reductions; an ``int`` (a real-token position, negative from the end) also works."""


@dataclass
class ActivationSet:
    """Reduced activations of a set of texts.

    Attributes:
        acts: hook name -> ``[n, d]`` (``[n, head, d_head]`` for per-head hooks), float32 on CPU.
        texts: the ``n`` texts.
        labels: ``[n]`` long labels, or ``None``.
        groups: control-task groups per text, or ``None``.
    """

    acts: dict[str, torch.Tensor]
    texts: list[str]
    labels: torch.Tensor | None = None
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def hooks(self) -> list[str]:
        return list(self.acts)

    def __getitem__(self, hook: str) -> torch.Tensor:
        if hook not in self.acts:
            raise UncoverError(f"no activations for {hook!r}; collected: {', '.join(self.acts)}")
        return self.acts[hook]

    def subset(self, idx: Sequence[int] | torch.Tensor) -> ActivationSet:
        """The rows at ``idx``."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        il = idx.tolist()
        return ActivationSet({k: v[idx] for k, v in self.acts.items()}, [self.texts[i] for i in il],
                             None if self.labels is None else self.labels[idx],
                             None if self.groups is None else [self.groups[i] for i in il])

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (activations, ``labels``) with texts and groups in its metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f"act.{k}": v.contiguous() for k, v in self.acts.items()}
        if self.labels is not None:
            tensors["labels"] = self.labels.contiguous()
        meta = {"format": "uncover-activations", "texts": json.dumps(self.texts),
                "groups": json.dumps(self.groups), "hooks": json.dumps(self.hooks)}
        save_file(tensors, str(path), metadata=meta)
        return path

    @staticmethod
    def read(path: str | Path) -> ActivationSet:
        """Inverse of :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "uncover-activations":
                raise UncoverError(f"{path}: not an uncover activation shard (format {meta.get('format')!r})")
            acts = {h: f.get_tensor(f"act.{h}") for h in json.loads(meta["hooks"])}
            labels = f.get_tensor("labels") if "labels" in f.keys() else None
        return ActivationSet(acts, json.loads(meta["texts"]), labels, json.loads(meta["groups"]))

    @staticmethod
    def concat(parts: Sequence[ActivationSet]) -> ActivationSet:
        """Rows of several sets (same hooks) one after another."""
        if not parts:
            raise UncoverError("no activation sets to concatenate")
        hooks = parts[0].hooks
        labels = None if any(p.labels is None for p in parts) else torch.cat([p.labels for p in parts])
        groups = None if any(p.groups is None for p in parts) else [g for p in parts for g in p.groups]
        return ActivationSet({h: torch.cat([p[h] for p in parts]) for h in hooks},
                             [t for p in parts for t in p.texts], labels, groups)


def resid_hooks(model: HookedModel, layers: Sequence[int] | None = None, point: str = "hook_resid_post") -> list[str]:
    """``blocks.{l}.{point}`` for each layer (default all); ``UncoverError`` for a layer out of range.

    >>> resid_hooks(model, [0, 2])
    ['blocks.0.hook_resid_post', 'blocks.2.hook_resid_post']
    """
    n = model.cfg.n_layers
    layers = list(range(n)) if layers is None else list(layers)
    bad = [la for la in layers if not 0 <= la < n]
    if bad:
        raise UncoverError(f"layer(s) {bad} out of range; this model has layers 0..{n - 1}")
    return [resid_name(la, point) for la in layers]


def mark_positions(model: HookedModel, texts: Sequence[str], marker: str = "*") -> tuple[list[str], list[int]]:
    """Strip ``marker``-delimited spans (``"The *capital* of"``) and return the clean texts and the
    position of each span's last token (for ``where="mark"``).

    >>> mark_positions(model, ["The *capital* of France", "Paris is *big*"])
    (['The capital of France', 'Paris is big'], [1, 2])
    """
    clean, pos = [], []
    for t in texts:
        a = t.find(marker)
        b = t.find(marker, a + 1)
        if a < 0 or b < 0:
            raise UncoverError(f"text {t!r} has no {marker}...{marker} mark")
        c = t[:a] + t[a + 1 : b] + t[b + 1 :]
        enc = model.tokenizer(c, return_offsets_mapping=True)
        end = b - 2  # last character of the marked span in the clean text (both markers removed before it)
        hit = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s <= end < e]
        if not hit:
            raise UncoverError(f"mark in {t!r} falls on no token")
        clean.append(c)
        pos.append(hit[-1])
    return clean, pos


def _index(mask: torch.Tensor, where: str | int, spans: Any, marks: Any, rows: slice) -> torch.Tensor:
    """``[batch, pos]`` float weights of the positions to average (each row sums to 1)."""
    mask = mask.float()
    n_real = mask.sum(-1).long()
    b, p = mask.shape
    w = torch.zeros(b, p)
    if where == "mean":
        return mask / mask.sum(-1, keepdim=True)
    for i in range(b):
        if where == "last":
            lo, hi = int(n_real[i]) - 1, int(n_real[i])
        elif isinstance(where, int):
            k = where if where >= 0 else int(n_real[i]) + where
            lo, hi = k, k + 1
        elif where == "span":
            lo, hi = spans[rows][i]
        else:
            lo = marks[rows][i]
            hi = lo + 1
        if not 0 <= lo < hi <= int(n_real[i]):
            raise UncoverError(f"position(s) {lo}..{hi - 1} outside text {rows.start + i} of {int(n_real[i])} tokens")
        w[i, lo:hi] = 1.0 / (hi - lo)
    return w


def _batches(model: HookedModel, data: Labelled | Sequence[str], hooks: Sequence[str] | str, where: str | int,
             spans: Any, marks: Any, batch_size: int, progress: bool) -> Iterator[ActivationSet]:
    lab = data if isinstance(data, Labelled) else None
    texts = list(data.texts if lab else data)
    if not texts:
        raise UncoverError("empty dataset: no texts to collect activations for")
    if not isinstance(where, int) and where not in WHERE:
        raise UncoverError(f"unknown where={where!r}; valid: {', '.join(WHERE)} or an int position")
    if where == "span" and (spans is None or len(spans) != len(texts)):
        raise UncoverError("where='span' needs spans=[(start, end), ...], one per text")
    if where == "mark" and (marks is None or len(marks) != len(texts)):
        raise UncoverError("where='mark' needs marks=[position, ...], one per text (see mark_positions)")
    names = [hooks] if isinstance(hooks, str) else list(hooks)

    def weights(batch: Any, rows: slice) -> torch.Tensor:
        return _index(batch.attention_mask.cpu(), where, spans, marks, rows)

    batches = harvest(model, texts, names, batch_size=batch_size, reduce=weights, progress=progress,
                      desc="activations")
    for start, (_, got) in zip(range(0, len(texts), batch_size), batches):
        rows = slice(start, min(start + batch_size, len(texts)))
        y = None if lab is None else lab.y[rows]
        g = None if lab is None or lab.groups is None else lab.groups[rows]
        yield ActivationSet({n: got[n] for n in names}, texts[rows], y, g)


def collect(
    model: HookedModel,
    data: Labelled | Sequence[str],
    hooks: Sequence[str] | str,
    *,
    where: str | int = "last",
    spans: Sequence[tuple[int, int]] | None = None,
    marks: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> ActivationSet:
    """Activations of ``data`` at ``hooks``, one vector per text (float32, CPU).

    ``where``: ``"last"`` (last real token), ``"mean"`` (mean over real tokens), ``"span"``
    (mean over real-token positions ``spans[i] = (start, end)``, end exclusive), ``"mark"``
    (the token ``marks[i]``, see :func:`mark_positions`) or an int real-token position.

    >>> from uncover.data.labelled import truth_statements
    >>> acts = collect(model, truth_statements(), resid_hooks(model, [10]), progress=False)
    >>> acts["blocks.10.hook_resid_post"].shape
    torch.Size([112, 576])
    """
    return ActivationSet.concat(list(_batches(model, data, hooks, where, spans, marks, batch_size, progress)))


def collect_to_disk(
    model: HookedModel,
    data: Labelled | Sequence[str],
    hooks: Sequence[str] | str,
    out_dir: str | Path,
    *,
    shard_size: int = 256,
    where: str | int = "last",
    spans: Sequence[tuple[int, int]] | None = None,
    marks: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> list[Path]:
    """Like :func:`collect`, but written to ``out_dir/shard_00000.safetensors ...`` as it goes
    (at most ``shard_size`` texts held in memory). Returns the shard paths.

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> paths = collect_to_disk(model, ["The cat", "A dog", "Some fish"], ["blocks.0.hook_resid_post"], out,
    ...                         shard_size=2, progress=False)
    >>> [p.name for p in paths]
    ['shard_00000.safetensors', 'shard_00001.safetensors']
    """
    if shard_size < 1:
        raise UncoverError(f"shard_size must be positive, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    pending: list[ActivationSet] = []

    def flush() -> None:
        if pending:
            paths.append(ActivationSet.concat(pending).save(out / f"shard_{len(paths):05d}.safetensors"))
            pending.clear()

    batch_size = min(batch_size, shard_size)
    for part in _batches(model, data, hooks, where, spans, marks, batch_size, progress):
        pending.append(part)
        if sum(len(p) for p in pending) >= shard_size:
            flush()
    flush()
    return paths


def iter_shards(path: str | Path) -> Iterator[ActivationSet]:
    """Each shard of a directory written by :func:`collect_to_disk`, in order.

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> _ = collect_to_disk(model, ["The cat", "A dog", "Some fish"], ["hook_embed"], out, shard_size=2, progress=False)
    >>> [len(shard) for shard in iter_shards(out)]
    [2, 1]
    """
    p = Path(path)
    files = sorted(p.glob("shard_*.safetensors")) if p.is_dir() else [p]
    if not files or not files[0].exists():
        raise UncoverError(f"{p}: no activation shards (shard_*.safetensors) found")
    for f in files:
        yield ActivationSet.read(f)


def load(path: str | Path) -> ActivationSet:
    """All shards of a directory (or one shard file) as one :class:`ActivationSet`.

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> _ = collect_to_disk(model, ["The cat", "A dog", "Some fish"], ["hook_embed"], out, shard_size=2, progress=False)
    >>> load(out)["hook_embed"].shape
    torch.Size([3, 576])
    """
    return ActivationSet.concat(list(iter_shards(path)))
