"""Weight changes that revert bit-exactly: the one mechanism behind model edits and pruning.

Edits (ROME, MEMIT, knowledge-neuron edits, :mod:`uncover.editing`) and pruning
(:mod:`uncover.pruning`) change parameters in place and hand back an object that undoes the
change. Both do it through this module:

- a *change* is ``{parameter path: tensor}`` in the parameter's own layout (``model.layers.3.mlp.down_proj.weight``),
  applied in one of two :data:`MODES`: ``"add"`` (new = original + delta, computed in the
  parameter's dtype, so applying the same delta to the same weights gives the same bits: edits)
  or ``"set"`` (new = the tensor: pruning, whose new values are not a sum);
- :func:`apply_change` writes a whole change all-or-nothing: the shapes are checked first, the
  originals of everything it will write are copied *before* the first write, and any exception,
  ``KeyboardInterrupt`` included, restores them before it propagates;
- :func:`transaction` gives the same guarantee to algorithms that write parameter after
  parameter as they go (sequential pruning): record each original with
  :meth:`Transaction.remember` before writing it;
- :func:`undone_on_error` covers what follows a write (building the change object, measuring it, stamping
  provenance): if that fails the change is undone, so a caller gets the change object or an unchanged model;
- :func:`restore` puts originals back (with Ctrl-C held off until it is done, so an interrupt
  cannot leave a half-restored model);
- :func:`save_change` / :func:`load_change` store a change as safetensors with its mode and
  free-form metadata;
- :func:`read` / :func:`write` reach a parameter wherever it lives: on any device, or offloaded by
  accelerate (``uncover.load(..., device_map=..., offload_folder=...)``), where the write is an
  in-memory override of the offloaded value (:mod:`uncover.hooks.offload`); every function above uses them.

>>> import torch
>>> lin = torch.nn.Linear(2, 2, bias=False)
>>> before = lin.weight.detach().clone()
>>> originals = apply_change(lin, {"weight": torch.ones(2, 2)}, "add")
>>> torch.equal(lin.weight, before + 1)
True
>>> restore(lin, originals)
>>> torch.equal(lin.weight, before)
True
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from uncover.core.errors import UncoverError
from uncover.hooks import offload

MODES = ("add", "set")
Mode = Literal["add", "set"]
MODE_KEY = "uncover.weights.mode"
"""Safetensors metadata key holding the change's mode."""


class WeightError(UncoverError):
    """A change that does not fit the model (unknown parameter, wrong shape) or a file that is not a change."""


def module_of(model: Any) -> nn.Module:
    """The ``nn.Module`` whose ``named_parameters()`` paths a change uses (a HookedModel's HF model).

    >>> lin = torch.nn.Linear(2, 2)
    >>> module_of(lin) is lin
    True
    """
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(model, "adapter") else model


def parameters(model: Any) -> dict[str, torch.Tensor]:
    """``{path: parameter}`` of ``model`` (a :class:`~uncover.hooks.hooked.HookedModel` or any module).

    >>> sorted(parameters(torch.nn.Linear(2, 3)))
    ['bias', 'weight']
    """
    return dict(module_of(model).named_parameters())


# ---- parameters wherever they live: any device, or offloaded by accelerate (uncover.hooks.offload) ----


def is_offloaded(model: Any, path: str) -> bool:
    """Whether parameter ``path`` is offloaded (meta on the module, its value in accelerate's weights map).

    >>> is_offloaded(torch.nn.Linear(2, 2), "weight")
    False
    """
    return offload.locate(module_of(model), path) is not None


def read(model: Any, path: str) -> torch.Tensor:
    """The real value of parameter ``path``: the parameter itself when resident (on any device), else
    its offloaded value (not a copy: clone it before changing it).

    >>> lin = torch.nn.Linear(2, 2)
    >>> read(lin, "weight") is lin.weight
    True
    """
    root = module_of(model)
    off = offload.locate(root, path)
    return root.get_parameter(path) if off is None else offload.value(*off)


def write(model: Any, path: str, value: torch.Tensor) -> None:
    """Set parameter ``path`` to ``value`` (cast to its dtype, moved to where its value lives).

    A resident parameter is written in place; an offloaded one gets an in-memory override in
    accelerate's weights map, which the next forward loads (the offload files stay untouched).

    >>> lin = torch.nn.Linear(2, 2, bias=False)
    >>> write(lin, "weight", torch.zeros(2, 2)); float(lin.weight.abs().sum())
    0.0
    """
    root = module_of(model)
    off = offload.locate(root, path)
    if off is None:
        p = root.get_parameter(path)
        with torch.no_grad():
            p.copy_(value.to(p.device, p.dtype))
    else:
        offload.override(*off, value, path)


def check_fits(model: Any, tensors: Mapping[str, Any], *, what: str = "change",
               error: type[Exception] = WeightError) -> dict[str, torch.Tensor]:
    """Refuse a change naming parameters ``model`` lacks or of other shapes; return the parameters it names.

    ``error``: the exception class to raise (a technique's own error type).

    >>> check_fits(torch.nn.Linear(2, 3), {"weight": torch.zeros(2, 2)})
    Traceback (most recent call last):
    ...
    uncover.hooks.weights.WeightError: shape mismatch for ['weight']: the change was made for another model
    """
    params = parameters(model)
    missing = [k for k in tensors if k not in params]
    if missing:
        raise error(f"the {what} names parameters this model lacks: {missing[:3]}; it was made for another model")
    bad = [k for k, v in tensors.items() if tuple(v.shape) != tuple(params[k].shape)]
    if bad:
        raise error(f"shape mismatch for {bad[:3]}: the {what} was made for another model")
    return {k: params[k] for k in tensors}


def snapshot(model: Any, paths: Any = None) -> dict[str, torch.Tensor]:
    """Copies of the parameters at ``paths`` (default: all of them).

    >>> lin = torch.nn.Linear(2, 2)
    >>> list(snapshot(lin, ["bias"]))
    ['bias']
    """
    keys = list(parameters(model)) if paths is None else list(paths)
    return {k: read(model, k).detach().clone() for k in keys}


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold off Ctrl-C (SIGINT) inside the block; one that arrived is raised when the block ends.

    Only in the main thread with Python's default handler installed (elsewhere the block runs as is).

    >>> with interrupts_deferred():
    ...     pass
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def restore(model: Any, originals: Mapping[str, torch.Tensor]) -> None:
    """Copy ``originals`` (``{path: tensor}``) back into the parameters, bit-exactly, Ctrl-C held off.

    >>> lin = torch.nn.Linear(2, 2)
    >>> saved = snapshot(lin)
    >>> with torch.no_grad():
    ...     _ = lin.weight.zero_()
    >>> restore(lin, saved)
    >>> torch.equal(lin.weight, saved["weight"])
    True
    """
    with interrupts_deferred(), torch.no_grad():
        for k, v in originals.items():
            write(model, k, v)


def apply_change(model: Any, tensors: Mapping[str, torch.Tensor], mode: Mode = "add", *, what: str = "change",
                 error: type[Exception] = WeightError) -> dict[str, torch.Tensor]:
    """Write a change into ``model``, all-or-nothing; return the originals of what it wrote.

    ``mode``: ``"add"`` (parameter + tensor, in the parameter's dtype) or ``"set"`` (the tensor).
    Every touched parameter is copied before the first write; if anything fails (a bad tensor, an
    out-of-memory error, Ctrl-C) the model is restored before the error propagates.

    >>> lin = torch.nn.Linear(2, 2, bias=False)
    >>> old = apply_change(lin, {"weight": torch.zeros(2, 2)}, "set")
    >>> float(lin.weight.abs().sum()), list(old)
    (0.0, ['weight'])
    """
    if mode not in MODES:
        raise WeightError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    check_fits(model, tensors, what=what, error=error)
    originals = {k: read(model, k).detach().clone() for k in tensors}
    try:
        for k, t in tensors.items():
            _write(model, k, originals[k], t, mode)
    except BaseException:
        restore(model, originals)
        raise
    return originals


def _write(model: Any, path: str, original: torch.Tensor, t: torch.Tensor, mode: Mode) -> None:
    """Write one parameter: ``original + t`` (``add``) or ``t`` (``set``), in the parameter's dtype and device."""
    new = t.to(original.device, original.dtype)
    with torch.no_grad():
        write(model, path, original + new if mode == "add" else new)


class Transaction:
    """Originals recorded before in-place writes, restored if the block that writes fails.

    Use through :func:`transaction`; :attr:`originals` is ``{path: original}``.

    >>> tx = Transaction(torch.nn.Linear(2, 2))
    >>> tx.remember("bias"); list(tx.originals)
    ['bias']
    """

    def __init__(self, model: Any):
        self.model = model
        self.originals: dict[str, torch.Tensor] = {}

    def remember(self, path: str, tensor: torch.Tensor | None = None) -> None:
        """Record the original of parameter ``path`` (once), before it is first written.

        ``tensor``: the parameter itself when the caller holds it (saves the lookup).
        """
        if path not in self.originals:
            t = read(self.model, path) if tensor is None or tensor.device.type == "meta" else tensor
            self.originals[path] = t.detach().clone()


@contextlib.contextmanager
def transaction(model: Any) -> Iterator[Transaction]:
    """A block of in-place writes that is all-or-nothing: call ``remember(path)`` before each write.

    On any exception (``KeyboardInterrupt`` included) every recorded parameter is restored and the
    exception propagates.

    >>> lin = torch.nn.Linear(2, 2, bias=False)
    >>> before = lin.weight.detach().clone()
    >>> try:
    ...     with transaction(lin) as tx, torch.no_grad():
    ...         tx.remember("weight")
    ...         _ = lin.weight.zero_()
    ...         raise RuntimeError("half-way")
    ... except RuntimeError:
    ...     pass
    >>> torch.equal(lin.weight, before)
    True
    """
    tx = Transaction(model)
    try:
        yield tx
    except BaseException:
        restore(model, tx.originals)
        raise


@contextlib.contextmanager
def undone_on_error(undo: Any) -> Iterator[None]:
    """Finish a change that is already in the model: if the block raises (``KeyboardInterrupt`` included),
    ``undo()`` (a change object's ``revert``) runs, Ctrl-C held off, before the exception propagates.

    The last step of every weight change: between the write and handing back the object that reverts it
    (building it, measuring it, stamping provenance) nothing may leave a changed model with no way back.
    ``undo=None``: nothing to undo (the block runs as is).

    >>> lin = torch.nn.Linear(2, 2, bias=False)
    >>> before = lin.weight.detach().clone()
    >>> old = apply_change(lin, {"weight": torch.ones(2, 2)}, "add")
    >>> try:
    ...     with undone_on_error(lambda: restore(lin, old)):
    ...         raise KeyboardInterrupt  # before the change object is returned
    ... except KeyboardInterrupt:
    ...     pass
    >>> torch.equal(lin.weight, before)
    True
    """
    try:
        yield
    except BaseException:
        if undo is not None:
            with interrupts_deferred():
                undo()
        raise


def current(model: Any, paths: Any) -> dict[str, torch.Tensor]:
    """The present values of the parameters at ``paths`` (detached, contiguous; not copies).

    >>> current(torch.nn.Linear(2, 3), ["bias"])["bias"].shape
    torch.Size([3])
    """
    return {k: read(model, k).detach().contiguous() for k in paths}


def save_change(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], mode: Mode,
                metadata: Mapping[str, str] | None = None) -> Path:
    """Write a change as one safetensors file (its mode and ``metadata`` as text metadata), atomically.

    >>> import tempfile, os
    >>> p = save_change(os.path.join(tempfile.mkdtemp(), "c.safetensors"), {"weight": torch.ones(2)}, "add")
    >>> load_change(p)[1]
    'add'
    """
    from safetensors.torch import save_file

    if mode not in MODES:
        raise WeightError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    path = Path(path)
    meta = {**(metadata or {}), MODE_KEY: mode}
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(data, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_change(path: str | os.PathLike, *, default_mode: Mode | None = None, error: type[Exception] = WeightError,
                ) -> tuple[dict[str, torch.Tensor], Mode, dict[str, str]]:
    """``(tensors, mode, metadata)`` of a file written by :func:`save_change`.

    ``default_mode``: the mode of files written before the mode was stored (else they are refused).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{path} is not a readable weight change (safetensors: {str(e).splitlines()[0]})") from None
    mode = meta.pop(MODE_KEY, default_mode)
    if mode not in MODES:
        raise error(f"{path}: no weight-change mode in its metadata; it was not written by uncover")
    return tensors, mode, meta  # type: ignore[return-value]
