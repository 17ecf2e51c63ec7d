"""ActivationCache: cached hook values and the residual-stream decompositions.

``accumulated_resid`` (the residual after each layer: what the logit lens reads),
``decompose_resid`` (embed + each attention and MLP output: sums to the final
residual), ``stack_head_results`` (each head's write to the residual stream) and
``apply_ln_to_stack`` (the final norm's scale applied to a stack, as TransformerLens
does, so that components add up to the pre-unembed activations).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, NamedTuple

import torch

from uncover.core.errors import UnknownHookName, did_you_mean
from uncover.core.names import act_name, head_label

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel
    from uncover.hooks.tokens import Batch


class Stack(NamedTuple):
    """A stack of residual-stream components ``[component, batch, pos, d_model]`` and their labels."""

    tensor: torch.Tensor
    labels: list[str]


def norm_scale(x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """The divisor a norm applies to ``x`` ``[..., d_model]``: ``[..., 1]`` (float32).

    RMSNorm: ``sqrt(mean(x²) + eps)``; LayerNorm: ``sqrt(var(x) + eps)``.
    """
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    if kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


class ActivationCache(Mapping[str, torch.Tensor]):
    """Mapping from hook name to tensor, plus the batch it came from.

    >>> logits, cache = model.run_with_cache("Hi there")
    >>> resid, labels = cache.accumulated_resid()
    """

    def __init__(
        self,
        store: dict[str, torch.Tensor],
        model: HookedModel,
        batch: Batch,
        pending: dict[str, torch.Tensor] | None = None,
    ):
        self.store = store
        self.model = model
        self.batch = batch
        self.pending = pending or {}
        """``hook_result`` names not computed yet, mapped to the cached ``hook_z`` they come from."""

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.store[name]
        except KeyError:
            if name in self.pending:
                z = self.pending.pop(name)  # [batch, pos, head, d_head]
                layer = int(name.split(".")[1])
                w_o = self.model.W_O(layer)
                self.store[name] = torch.einsum("bphd,hdm->bphm", z, w_o.to(device=z.device, dtype=z.dtype))
                return self.store[name]
            if name in self.model.hook_names():
                raise UnknownHookName(f"{name!r} was not cached; pass it in names= to run_with_cache") from None
            valid = list(self.store) or self.model.hook_names()
            raise UnknownHookName(did_you_mean(name, valid, "hook name")) from None

    def __contains__(self, name: object) -> bool:
        return name in self.store or name in self.pending

    def __iter__(self) -> Iterator[str]:
        return iter([*self.store, *self.pending])

    def __len__(self) -> int:
        return len(self.store) + len(self.pending)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} hooks, batch={tuple(self.batch.input_ids.shape)})"

    # ---- residual stream ------------------------------------------------------------------
    def final_resid(self) -> torch.Tensor:
        """The residual stream entering the final norm: ``[batch, pos, d_model]``."""
        return self[act_name("resid_post", self.model.cfg.n_layers - 1)]

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False) -> Stack:
        """Residual stream before each layer up to ``layer`` (default: all, plus the final one).

        Returns ``[layer + 1, batch, pos, d_model]`` with labels ``0_pre``, (``0_mid``), ...,
        ``final_post``.
        """
        n = self.model.cfg.n_layers
        upto = n if layer is None else layer
        parts, labels = [], []
        for i in range(min(upto, n)):
            parts.append(self[act_name("resid_pre", i)])
            labels.append(f"{i}_pre")
            if incl_mid:
                parts.append(self[act_name("resid_mid", i)])
                labels.append(f"{i}_mid")
        if layer is None or layer >= n:
            parts.append(self.final_resid())
            labels.append("final_post")
        else:
            parts.append(self[act_name("resid_pre", layer)])
            labels.append(f"{layer}_pre")
        return Stack(torch.stack(parts), labels)

    def decompose_resid(self, layer: int | None = None) -> Stack:
        """Embedding, then each attention and MLP output before ``layer`` (default: all).

        The components sum to the residual stream at that point.
        Returns ``[component, batch, pos, d_model]`` and labels (``embed``, ``pos_embed``,
        ``0_attn_out``, ``0_mlp_out``, ...).
        """
        n = self.model.cfg.n_layers if layer is None else layer
        embed = self["hook_embed"]
        parts, labels = [embed], ["embed"]
        if "hook_pos_embed" in self.model.hook_names():
            parts.append(self["hook_pos_embed"].expand_as(embed))  # [1, pos, d] broadcasts over the batch
            labels.append("pos_embed")
        for i in range(n):
            for kind in ("attn_out", "mlp_out"):
                parts.append(self[act_name(kind, i)])
                labels.append(f"{i}_{kind}")
        return Stack(torch.stack(parts), labels)

    def head_results(self, layer: int) -> torch.Tensor:
        """Each head's write to the residual stream at ``layer``: ``[batch, pos, head, d_model]``.

        From ``hook_result`` if cached, else from ``hook_z`` and ``W_O``. With post-attention
        norms (Gemma 2/3) each head's output is multiplied by that norm's weight and divided by
        its scale, so the heads still sum to ``hook_attn_out`` (minus the bias, when present).
        """
        m = self.model
        name = act_name("result", layer)
        if name in self:
            res = self[name]
        else:
            z = self[act_name("z", layer)]  # [batch, pos, head, d_head]
            res = torch.einsum("bphd,hdm->bphm", z, m.W_O(layer).to(z))
        post = m.adapter.family.attn_post_norm
        if post is not None:
            mod = m.norm(layer, "attn_post")
            w, _, eps = m.adapter.norm_params(mod)
            b_o = m.adapter.b_O(layer)
            total = res.sum(-2) + (0 if b_o is None else b_o.to(res.device))
            scale = norm_scale(total, m.cfg.norm_kind, eps).unsqueeze(-2)  # [b, p, 1, 1]
            res = (res.float() / scale * w.float().to(res.device)).to(res.dtype)
        return res

    def stack_head_results(self, layer: int | None = None) -> Stack:
        """Every head's write to the residual stream for layers before ``layer`` (default: all).

        Returns ``[layer * n_heads, batch, pos, d_model]`` with labels ``L{l}H{h}``. Attention
        output biases are not included (see :meth:`attn_biases`).
        """
        n = self.model.cfg.n_layers if layer is None else layer
        parts, labels = [], []
        for i in range(n):
            r = self.head_results(i)
            for h in range(r.shape[-2]):
                parts.append(r[..., h, :])
                labels.append(head_label(i, h))
        return Stack(torch.stack(parts), labels)

    def apply_ln_to_stack(self, stack: torch.Tensor, pos_slice: slice | None = None) -> torch.Tensor:
        """Apply the final norm's (frozen) scale to each component of ``stack``.

        ``stack`` is ``[component, batch, pos, d_model]``. LayerNorm components are centred.
        The norm's weight is not applied (fold it into ``W_U``); the result summed over
        components equals the final normalized residual divided by the weight, minus the bias.
        """
        m = self.model
        _, _, eps = m.adapter.norm_params(m.adapter.final_norm())
        x = self.final_resid()
        scale = norm_scale(x, m.cfg.norm_kind, eps)  # [batch, pos, 1]
        if pos_slice is not None:
            scale = scale[:, pos_slice]
        s = stack.to(torch.promote_types(stack.dtype, torch.float32))
        if m.cfg.norm_kind == "layer":
            s = s - s.mean(-1, keepdim=True)
        return s / scale
