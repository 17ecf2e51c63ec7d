"""Recipes ``run_with_cache`` keeps instead of values the model computes from other cached ones.

``mlp.hook_post`` as ``act(hook_pre) [* hook_pre_linear]`` (a formula checked bit for bit against the model
once per MLP) and per-head ``attn.hook_result`` from ``hook_z`` and ``W_O`` (computed on first read). The
other recipes (``hook_resid_mid``, scores and patterns) are offered by the hook engine during the forward
pass (``hooks/engine.py``); how a recorder takes them is in ``hooks/cache.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from uncover.core.names import resid_name
from uncover.hooks.cache import Lazy, Recorder

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def neuron_formula(model: HookedModel, rec: Recorder, layer: int, chosen: set[str]) -> None:
    """Let ``mlp.hook_post`` of ``layer`` be kept as ``act(hook_pre) [* hook_pre_linear]`` when both are cached.

    ``act`` is the MLP's one parameterless non-linear child module; the recorder checks the formula
    against the model's own value the first time (per MLP and activation module) and uses it only if it
    was bit-identical. Not while any other hook could write the value (hooks on the down projection or
    the activation, or global module hooks).

    >>> _, cache = model.run_with_cache("Hi", names=["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_pre_linear",
    ...                                               "blocks.0.mlp.hook_post"])
    >>> "blocks.0.mlp.hook_post" in cache.pending, cache["blocks.0.mlp.hook_post"].shape
    (True, torch.Size([1, 1, 1536]))
    """
    a, c = model.adapter, model.cfg
    post = resid_name(layer, "mlp.hook_post")
    needs = [resid_name(layer, p) for p in ("mlp.hook_pre", "mlp.hook_pre_linear")[: 1 + c.gated_mlp]]
    if c.n_experts or not set(needs) <= chosen:
        return
    mlp, down = a.mlp(layer), a.mlp_part(layer, a.family.mlp_out)
    acts = [m for m in mlp.children()
            if not isinstance(m, (nn.Linear, nn.Dropout)) and next(m.parameters(), None) is None]
    if len(acts) != 1 or down is None:
        return
    act = acts[0]
    everywhere = nn.modules.module  # hooks registered for every module
    if (down._forward_pre_hooks or act._forward_hooks or act._forward_pre_hooks
            or getattr(everywhere, "_global_forward_hooks", None)
            or getattr(everywhere, "_global_forward_pre_hooks", None)):
        return

    def gated(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_mlp] each
        return act.forward(gate) * up

    key = ("mlp.hook_post", layer, id(mlp), id(act), type(act))
    rec.formula(post, needs, gated if c.gated_mlp else act.forward, model._formulas_checked, key)


def head_results(model: HookedModel, name: str, z: torch.Tensor) -> Lazy:
    """``name`` (``blocks.{l}.attn.hook_result``) as a recipe from the cached ``z``.

    ``z`` is ``[batch, pos, head, d_head]``; the value is ``[batch, pos, head, d_model]``.

    >>> _, cache = model.run_with_cache("Hi", names=["blocks.0.attn.hook_z"])
    >>> recipe = head_results(model, "blocks.0.attn.hook_result", cache["blocks.0.attn.hook_z"])
    >>> recipe()["blocks.0.attn.hook_result"].shape
    torch.Size([1, 1, 9, 576])
    """
    layer = int(name.split(".")[1])

    def compute(z: torch.Tensor) -> dict[str, torch.Tensor]:
        w_o = model.W_O(layer)  # [head, d_head, d_model]
        return {name: torch.einsum("bphd,hdm->bphm", z, w_o.to(device=z.device, dtype=z.dtype))}

    return Lazy(compute, [z])
