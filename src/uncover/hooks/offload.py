"""Weights of a model that accelerate spread over devices or offloaded (``uncover.load(..., device_map=...)``).

With ``device_map`` and ``offload_folder``, accelerate keeps an offloaded module's parameters on the
``meta`` device and its ``AlignDevicesHook`` loads them from a ``weights_map`` (CPU memory, or the
model's own safetensors files on disk) for each forward, then drops them again. Outside a forward such
a parameter is a meta tensor, and PyTorch computes ``x @ meta`` without complaint into garbage, so
everything that reads weights outside a forward goes through this module:

- :func:`onloaded` loads a module's offloaded parameters for a block (standard-form weights, the
  per-head ``hook_result`` after ``o_proj`` has run);
- :class:`OffloadedAdapter` is the adapter a :class:`~uncover.hooks.hooked.HookedModel` of an offloaded
  model uses: every standard-form weight (``W_Q`` ... ``W_U``, norms) is read with the module loaded;
- :func:`locate`, :func:`value` and :func:`override` find, read and write the real value of one
  parameter (:mod:`uncover.hooks.weights` builds edits and bit-exact reverts on them). A write is an
  in-memory override in accelerate's weights map, which has priority over the files: the offload
  folder and the model's files are never written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from uncover.core.errors import UncoverError
from uncover.models.adapter import Adapter


class OffloadError(UncoverError):
    """An offloaded parameter that cannot be read or written."""


def hook_of(module: nn.Module) -> Any:
    """The accelerate hook that holds ``module``'s offloaded weights, or ``None``.

    >>> hook_of(torch.nn.Linear(2, 2)) is None
    True
    """
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None:
            return h
    return None


def locate(root: nn.Module, path: str) -> tuple[Any, str] | None:
    """``(hook, key in its weights map)`` of parameter ``path`` of ``root`` if it is offloaded, else ``None``.

    >>> locate(torch.nn.Linear(2, 2), "weight") is None
    True
    """
    p = root.get_parameter(path)
    if p.device.type != "meta":
        return None
    parts = path.split(".")
    for i in range(len(parts) - 1, -1, -1):
        hook = hook_of(root.get_submodule(".".join(parts[:i])))
        if hook is not None:
            return hook, ".".join(parts[i:])
    raise OffloadError(f"parameter {path} is on the meta device and no accelerate hook holds its value; "
                       "load the model with its weights (a device_map of real devices, or an offload_folder)")


def value(hook: Any, key: str) -> torch.Tensor:
    """The offloaded value of ``key`` in ``hook``'s weights map (where it lives: CPU, or read from disk)."""
    return hook.weights_map[key]


def override(hook: Any, key: str, new: torch.Tensor, path: str = "") -> None:
    """Make ``new`` the value of offloaded ``key`` (in the stored dtype and device) for the next forwards.

    accelerate's ``OffloadedWeightsLoader`` reads its in-memory ``state_dict`` before its files, so the
    override goes there; a plain dict weights map (``cpu_offload``) is written directly.
    """
    old = hook.weights_map[key]
    new = new.detach().to(old.device, old.dtype).clone()
    wm = hook.weights_map
    dataset, prefix = getattr(wm, "dataset", None), getattr(wm, "prefix", None)
    if dataset is not None and prefix is not None:  # a PrefixedDataset over the loader
        store, key = getattr(dataset, "state_dict", dataset), prefix + key
    else:
        store = wm
    try:
        store[key] = new
    except TypeError as e:
        raise OffloadError(f"cannot write offloaded parameter {path or key}: its weights map "
                           f"({type(store).__name__}) is read-only; load the model without offloading") from e


@contextlib.contextmanager
def onloaded(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, the offloaded parameters of ``module`` and its submodules are real tensors
    on their execution device; tensors taken from them stay valid after the block.

    A resident module is left as it is.

    >>> lin = torch.nn.Linear(2, 2)
    >>> with onloaded(lin) as m:
    ...     m.weight.device.type
    'cpu'
    """
    loaded = []
    try:
        for m in module.modules():
            hook = hook_of(m)
            if hook is not None and any(p.device.type == "meta" for p in m.parameters(recurse=False)):
                hook._onload_weights(m)
                loaded.append((hook, m))
        yield module
    finally:
        for hook, m in reversed(loaded):
            hook._offload_weights(m)


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its accelerate hook's execution device, else its first real parameter's.

    >>> execution_device(torch.nn.Linear(2, 2))
    device(type='cpu')
    """
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def is_offloaded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is offloaded (on the meta device).

    >>> is_offloaded(torch.nn.Linear(2, 2))
    False
    """
    return any(p.device.type == "meta" for p in model.parameters())


def _attn_weights(name: str) -> Any:
    def read(self: OffloadedAdapter, layer: int) -> Any:
        with onloaded(self.attn(layer)):
            return getattr(Adapter, name)(self, layer)

    read.__doc__ = getattr(Adapter, name).__doc__
    return read


def _mlp_weights(name: str) -> Any:
    def read(self: OffloadedAdapter, layer: int) -> Any:
        with onloaded(self.mlp(layer)):
            return getattr(Adapter, name)(self, layer)

    read.__doc__ = getattr(Adapter, name).__doc__
    return read


def _module_weight(name: str, path: str) -> property:
    def read(self: OffloadedAdapter) -> Any:
        mod_path = getattr(self.family, path)
        if mod_path is None:
            return getattr(Adapter, name).fget(self)
        with onloaded(self.module(mod_path)):
            return getattr(Adapter, name).fget(self)

    return property(read, doc=getattr(Adapter, name).__doc__)


class OffloadedAdapter(Adapter):
    """An :class:`~uncover.models.adapter.Adapter` whose standard-form weights are real tensors when
    accelerate has offloaded their modules (each read loads the module, views the weight, drops it)."""

    W_Q = _attn_weights("W_Q")
    W_K = _attn_weights("W_K")
    W_V = _attn_weights("W_V")
    b_QKV = _attn_weights("b_QKV")
    W_O = _attn_weights("W_O")
    b_O = _attn_weights("b_O")
    W_in = _mlp_weights("W_in")
    W_gate = _mlp_weights("W_gate")
    W_out = _mlp_weights("W_out")
    b_out = _mlp_weights("b_out")
    W_E = _module_weight("W_E", "embed")
    W_pos = _module_weight("W_pos", "pos_embed")
    W_U = _module_weight("W_U", "unembed")
    b_U = _module_weight("b_U", "unembed")

    def norm_params(self, mod: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
        with onloaded(mod):
            return super().norm_params(mod)

    def expert_hidden(self, layer: int, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        with onloaded(self.experts_module(layer)):  # hook_expert_out and per-expert pruning calibration
            return super().expert_hidden(layer, x, expert)

    def expert_mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        with onloaded(self.experts_module(layer)):
            return super().expert_mlp(layer, x)
