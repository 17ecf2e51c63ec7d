"""Sender outputs and receiver gradients of the circuit graph, from ordinary forward passes.

Sender outputs in the residual basis: the input is ``hook_embed`` (position embeddings
are the same in every run, so they never carry a difference), a head's output is its
``hook_z`` slice times its ``W_O`` slice (``hook_result``, computed here from ``hook_z`` in
one einsum per layer) and an MLP's output is ``hook_mlp_out``.

Receiver gradients (what EAP needs): the derivative of the metric with respect to *one
receiver's own copy* of the residual stream, as if each head's query, each key/value
head's key and value, and each MLP read a private copy. No ungrouped copy of the model is
made: gradients are taken at the points right after the projections (``hook_q``/``k``/``v``,
before rotary embeddings, and at the output of the MLP's norm), then pulled back through
that receiver's projection slice and the shared norm by one vector-Jacobian product on a
``[batch, pos, receiver, d_model]`` stack of the norm's input (:func:`pull_back`). The
logits' receiver is the final residual itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from uncover.circuits.graph import Graph
from uncover.core.names import resid_name

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel
    from uncover.hooks.tokens import Batch

EmbedFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Captured:
    """What one forward pass recorded.

    Attributes:
        logits: ``[batch, pos, d_vocab]`` (attached to the autograd graph when ``track``).
        senders: ``[n_senders, batch, pos, d_model]`` sender outputs (``None`` if not asked for).
        resid_pre: per block, the residual its attention reads ``[batch, pos, d_model]``.
        mlp_in: per block, the residual its MLP reads (``resid_mid``, or ``resid_pre`` if parallel).
        points: gradient points (``track`` only): ``q``/``k``/``v`` ``[batch, pos, head, d_head]`` and
            ``n2`` (the MLP's normed input) per block, ``final`` (last residual).
    """

    logits: torch.Tensor
    senders: torch.Tensor | None
    resid_pre: list[torch.Tensor]
    mlp_in: list[torch.Tensor]
    points: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def head_outputs(model: HookedModel, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Per-head outputs in the residual basis: ``z`` ``[batch, pos, head, d_head]`` → ``[head, batch, pos, d_model]``.

    >>> _, cache = model.run_with_cache("Hi there", ["blocks.3.attn.hook_z"])
    >>> head_outputs(model, 3, cache["blocks.3.attn.hook_z"]).shape
    torch.Size([9, 1, 2, 576])
    """
    w_o = model.W_O(layer)  # [head, d_head, d_model]
    return torch.einsum("bphk,hkm->hbpm", z, w_o.to(z.dtype))


def capture(
    model: HookedModel,
    graph: Graph,
    batch: Batch,
    *,
    senders: bool = True,
    track: bool = False,
    embed: EmbedFn | None = None,
) -> Captured:
    """Run ``batch`` once through the model, recording sender outputs and the norms' inputs.

    ``track``: keep the autograd graph and expose gradient points (see :class:`Captured`).
    ``embed``: replace the token embeddings ``[batch, pos, d_model]`` by ``embed(embeddings)``
    (EAP-IG's interpolations).

    >>> cap = capture(model, Graph.from_model(model), model.tokenize(["Hi there"]))
    >>> cap.senders.shape
    torch.Size([301, 1, 2, 576])
    """
    c = model.cfg
    b, s = batch.input_ids.shape
    store = torch.empty(graph.n_senders, b, s, c.d_model, dtype=model.dtype, device=model.device) if senders else None
    resid_pre: list[Any] = [None] * c.n_layers
    mlp_in: list[Any] = [None] * c.n_layers
    points: dict[str, list[Any]] = {k: [None] * c.n_layers for k in ("q", "k", "v", "n2")}
    points["final"] = [None]

    def on_embed(v: torch.Tensor, hp: Any) -> torch.Tensor | None:
        new = embed(v) if embed is not None else v
        if store is not None:
            store[0] = new.detach()
        if track:  # a leaf, so gradients flow whatever the parameters' requires_grad
            return new.detach().requires_grad_(True)
        return None if embed is None else new

    def keep(kind: str, layer: int) -> Callable:
        def fn(v: torch.Tensor, hp: Any) -> torch.Tensor | None:
            if kind == "pre":
                resid_pre[layer] = v.detach()
                if c.parallel_attn_mlp:
                    mlp_in[layer] = resid_pre[layer]
            elif kind == "mid":
                mlp_in[layer] = v.detach()
            elif kind == "z":
                if store is not None:
                    h0 = graph.head_sender(layer, 0)
                    store[h0 : h0 + c.n_heads] = head_outputs(model, layer, v.detach())
            elif kind == "mlp":
                if store is not None:
                    store[graph.mlp_sender(layer)] = v.detach()
            else:  # a gradient point: a copy that the rest of the forward pass uses
                new = v.clone()
                (points["final"] if kind == "final" else points[kind])[0 if kind == "final" else layer] = new
                return new
            return None

        return fn

    hooks: list[tuple[str, Callable]] = [("hook_embed", on_embed)]
    for layer in range(c.n_layers):
        hooks += [(resid_name(layer, "hook_resid_pre"), keep("pre", layer)),
                  (resid_name(layer, "attn.hook_z"), keep("z", layer)),
                  (resid_name(layer, "hook_mlp_out"), keep("mlp", layer))]
        if not c.parallel_attn_mlp:
            hooks.append((resid_name(layer, "hook_resid_mid"), keep("mid", layer)))
        if track:
            hooks += [(resid_name(layer, f"attn.hook_{k}"), keep(k, layer)) for k in ("q", "k", "v")]
            hooks.append((resid_name(layer, "ln2.hook_normalized"), keep("n2", layer)))
    if track:
        hooks.append((resid_name(c.n_layers - 1, "hook_resid_post"), keep("final", c.n_layers - 1)))
    with torch.set_grad_enabled(track), model.hooks(hooks):
        logits = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return Captured(logits, store, resid_pre, mlp_in, points if track else {})


def qkv_from_resid(model: HookedModel, layer: int, x: torch.Tensor, which: str) -> torch.Tensor:
    """What ``hook_q``/``hook_k``/``hook_v`` of ``layer`` compute from per-receiver residuals.

    ``x``: ``[..., n, d_model]``, one residual per head of the kind (``n_heads`` query heads or
    ``n_kv_heads`` key/value heads). Returns ``[..., n, d_head]``: ln1, that head's projection
    slice and bias, and the per-head q/k norm where the family has one (before rotary).

    >>> _, cache = model.run_with_cache("Hi there", ["blocks.3.hook_resid_pre", "blocks.3.attn.hook_q"])
    >>> x = cache["blocks.3.hook_resid_pre"][:, :, None].expand(-1, -1, 9, -1)
    >>> torch.allclose(qkv_from_resid(model, 3, x, "q"), cache["blocks.3.attn.hook_q"], atol=1e-5)
    True
    """
    a = model.adapter
    i = "qkv".index(which)
    w = (a.W_Q, a.W_K, a.W_V)[i](layer)  # [n, d_model, d_head]
    bias = a.b_QKV(layer)[i]
    n = model.norm(layer, "ln1").forward(x)  # .forward: no hooks fire on this side computation
    out = torch.einsum("...nd,ndk->...nk", n, w.to(n.dtype))
    if bias is not None:
        out = out + bias.to(out.dtype)
    qk_norm = (a.family.q_norm, a.family.k_norm, None)[i]
    if qk_norm is not None:
        out = a.attn_part(layer, qk_norm).forward(out)
    return out


def pull_back(
    model: HookedModel, layer: int, x: torch.Tensor, g_q: torch.Tensor, g_k: torch.Tensor, g_v: torch.Tensor
) -> torch.Tensor:
    """Gradients w.r.t. each attention receiver's own copy of the residual ``x`` ``[batch, pos, d_model]``.

    ``g_q`` ``[batch, pos, n_heads, d_head]`` and ``g_k``/``g_v`` ``[batch, pos, n_kv_heads, d_head]``
    are the gradients at ``hook_q``/``hook_k``/``hook_v``. Returns ``[batch, pos, n_heads + 2 n_kv_heads,
    d_model]`` in receiver order (q heads, k heads, v heads): one vector-Jacobian product through
    the norm and each head's own projection slice.

    >>> x, g_q, g_kv = torch.randn(1, 2, 576), torch.randn(1, 2, 9, 64), torch.randn(1, 2, 3, 64)
    >>> pull_back(model, 3, x, g_q, g_kv, g_kv).shape
    torch.Size([1, 2, 15, 576])
    """
    c = model.cfg
    n_attn = c.n_heads + 2 * c.n_kv_heads
    with torch.enable_grad():
        xr = x.detach().unsqueeze(-2).expand(*x.shape[:-1], n_attn, x.shape[-1]).clone().requires_grad_(True)
        q = qkv_from_resid(model, layer, xr[..., : c.n_heads, :], "q")
        k = qkv_from_resid(model, layer, xr[..., c.n_heads : c.n_heads + c.n_kv_heads, :], "k")
        v = qkv_from_resid(model, layer, xr[..., c.n_heads + c.n_kv_heads :, :], "v")
        (g,) = torch.autograd.grad((q, k, v), xr, (g_q.to(q.dtype), g_k.to(k.dtype), g_v.to(v.dtype)))
    return g


def pull_back_mlp(model: HookedModel, layer: int, x: torch.Tensor, g_n2: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the MLP's own copy of its input residual ``x``, from the gradient at ``ln2``'s output.

    >>> pull_back_mlp(model, 3, torch.randn(1, 2, 576), torch.randn(1, 2, 576)).shape
    torch.Size([1, 2, 576])
    """
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model.norm(layer, "ln2").forward(xr), xr, g_n2)
    return g


def receiver_grads(
    model: HookedModel, graph: Graph, cap: Captured, grads: dict[str, list[torch.Tensor]]
) -> torch.Tensor:
    """``[n_receivers, batch, pos, d_model]`` from the gradients at ``cap.points`` (same structure).

    >>> graph = Graph.from_model(model)
    >>> cap = capture(model, graph, model.tokenize(["Hi there"]), senders=False, track=True)
    >>> flat = torch.autograd.grad(cap.logits[0, -1].logsumexp(-1), point_list(cap.points))
    >>> receiver_grads(model, graph, cap, unflatten(cap.points, list(flat))).shape
    torch.Size([481, 1, 2, 576])
    """
    c = model.cfg
    x0 = cap.resid_pre[0]
    out = torch.empty(graph.n_receivers, *x0.shape, dtype=x0.dtype, device=x0.device)
    n_attn = c.n_heads + 2 * c.n_kv_heads
    for layer in range(c.n_layers):
        sl = graph.layer_receivers(layer)
        g = pull_back(model, layer, cap.resid_pre[layer], grads["q"][layer], grads["k"][layer], grads["v"][layer])
        out[sl.start : sl.start + n_attn] = g.movedim(-2, 0)
        out[sl.stop - 1] = pull_back_mlp(model, layer, cap.mlp_in[layer], grads["n2"][layer])
    out[-1] = grads["final"][0]
    return out.detach()


def point_list(points: dict[str, list[torch.Tensor]]) -> list[torch.Tensor]:
    """The gradient points flattened in a fixed order (``q k v n2`` per block, then ``final``).

    >>> point_list({"q": [1], "k": [2], "v": [3], "n2": [4], "final": [5]})
    [1, 2, 3, 4, 5]
    """
    return [t for k in ("q", "k", "v", "n2", "final") for t in points[k]]


def unflatten(points: dict[str, list[torch.Tensor]], flat: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Inverse of :func:`point_list` for a list of gradients.

    >>> unflatten({"q": [0], "k": [0], "v": [0], "n2": [0], "final": [0]}, [1, 2, 3, 4, 5])["n2"]
    [4]
    """
    out, i = {}, 0
    for k in ("q", "k", "v", "n2", "final"):
        n = len(points[k])
        out[k] = list(flat[i : i + n])
        i += n
    return out
