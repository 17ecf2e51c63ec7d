"""The local replacement model of one prompt (Ameisen et al. 2025, "Circuit Tracing", section 2).

One forward pass of the real model, with hooks that make everything between the graph's nodes
linear while leaving every value unchanged:

- attention patterns are detached (``attn.hook_pattern``), so attention is linear in its values;
- norms (``ln1``, ``ln2``, post-attention norms, the final norm) keep their scale from this pass:
  a forward hook on each norm module returns ``out.detach() + w * (x - x.detach()) / scale``, the
  norm's value with the gradient of the norm at a frozen scale (centred first for LayerNorm);
- each MLP output becomes ``out.detach() + (recon - recon.detach()) + (err - err.detach())``:
  the real value, with gradients into the transcoder features that write there (their
  activations are leaves: features are computed from the detached MLP input, so no gradient
  crosses an encoder), into the skip connection, and into the error node ``err = out - recon``;
- the token (and position) embeddings are leaves.

So the logits of the pass are the model's own (the error nodes carry exactly what the
transcoders miss), and the gradient of any scalar of the pass with respect to a leaf is its
direct effect through the frozen linear system. MLPs of layers without a transcoder are
whole error nodes. Hooks on norm modules are plain PyTorch hooks (no hook name gives a norm's
input, which the frozen scale needs); they are removed in ``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.names import resid_name
from uncover.hooks.cache import norm_scale

if TYPE_CHECKING:
    from torch import nn

    from uncover.hooks.hooked import HookedModel
    from uncover.transcoders import TranscoderSet


@dataclass
class Features:
    """The active features read at one layer: ``pos [n]``, ``index [n]`` and activations ``act [n]`` (a leaf)."""

    pos: torch.Tensor
    index: torch.Tensor
    act: torch.Tensor


@dataclass
class ReplacementPass:
    """Values and leaves of one replacement forward pass over a prompt of ``pos`` tokens.

    Attributes:
        logits: ``[pos, d_vocab]`` logits of the pass (the real model's).
        pre_logits: ``[pos, d_vocab]`` unembedding output (before any soft-capping), with gradients.
        embeds: leaves ``[1, pos, d_model]`` of the embeddings (tokens; positions when the model has them).
        features: ``{layer: Features}`` of the covered layers.
        errors: ``{layer: [pos, d_model]}`` error-node leaves of every layer.
        mlp_inputs: ``{layer: [pos, d_in]}`` MLP inputs of the covered layers (frozen-scale norm outputs,
            with gradients: what feature pre-activations are read from).
    """

    logits: torch.Tensor
    pre_logits: torch.Tensor
    embeds: list[torch.Tensor]
    features: dict[int, Features]
    errors: dict[int, torch.Tensor]
    mlp_inputs: dict[int, torch.Tensor] = field(default_factory=dict)

    def leaves(self) -> list[torch.Tensor]:
        """Every leaf: feature activations by layer, then errors by layer, then embeddings."""
        return ([self.features[la].act for la in sorted(self.features)]
                + [self.errors[la] for la in sorted(self.errors)] + list(self.embeds))


def norm_modules(model: HookedModel) -> list[tuple[str, int | None, nn.Module]]:
    """``(which, layer, module)`` of every norm on the residual path (``ln1``, ``ln2``, ``attn_post``, final)."""
    out: list[tuple[str, int | None, nn.Module]] = []
    for layer in range(model.cfg.n_layers):
        for which in ("ln1", "ln2") + (("attn_post",) if model.adapter.family.attn_post_norm else ()):
            out.append((which, layer, model.norm(layer, which)))
    out.append(("final", None, model.norm(None)))
    return out


@contextlib.contextmanager
def frozen_norms(model: HookedModel, stash: dict[int, torch.Tensor] | None = None) -> Iterator[None]:
    """Norms keep their value and are linear at their frozen scale; ``stash[layer]`` gets each ``ln2`` output."""
    kind = model.cfg.norm_kind
    handles = []

    def make(mod: nn.Module, which: str, layer: int | None) -> Any:
        w, b, eps = model.adapter.norm_params(mod)

        def hook(m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            x = args[0]
            scale = norm_scale(x.detach(), kind, eps)  # [..., 1]
            d = (x - x.detach()).to(scale.dtype)
            if kind == "layer":
                d = d - d.mean(-1, keepdim=True)
            lin = d / scale
            if w is not None:
                lin = lin * w.to(lin.dtype)
            new = out.detach() + lin.to(out.dtype)
            if stash is not None and which == "ln2" and layer is not None:
                stash[layer] = new
            return new

        return hook

    try:
        for which, layer, mod in norm_modules(model):
            handles.append(mod.register_forward_hook(make(mod, which, layer)))
        yield
    finally:
        for h in handles:
            h.remove()


def replacement_pass(model: HookedModel, tset: TranscoderSet, tokens: torch.Tensor) -> ReplacementPass:
    """Run ``tokens`` ``[pos]`` (one prompt) through the local replacement model; gradients enabled.

    >>> from uncover.transcoders import TranscoderSet, Transcoder, TranscoderConfig
    >>> ts = TranscoderSet({2: Transcoder(TranscoderConfig(d_in=576, d_sae=64, d_out=576, k=4,
    ...                                                    hook_name="blocks.2.ln2.hook_normalized"))})
    >>> rp = replacement_pass(model, ts, model.to_tokens("The Eiffel Tower is in")[0])
    >>> torch.allclose(rp.logits, model(model.to_tokens("The Eiffel Tower is in"))[0], atol=1e-4)
    True
    """
    tset.check_model(model, "attribution graph")
    ids = tokens.reshape(1, -1).to(model.device)
    c = model.cfg
    covered = set(tset.layers)
    inputs: dict[int, torch.Tensor] = {}
    feats: dict[int, Features] = {}
    errors: dict[int, torch.Tensor] = {}
    embeds: list[torch.Tensor] = []
    got: dict[str, torch.Tensor] = {}

    def leaf(v: torch.Tensor, hp: Any) -> torch.Tensor:
        e = v.detach().clone().requires_grad_(True)
        embeds.append(e)
        return e

    def pattern(v: torch.Tensor, hp: Any) -> torch.Tensor:
        return v.detach()

    def mlp(layer: int) -> Any:
        def fn(v: torch.Tensor, hp: Any) -> torch.Tensor:
            out = v[0]
            recon = torch.zeros(out.shape, dtype=torch.promote_types(out.dtype, torch.float32), device=out.device)
            if layer in covered:
                x = inputs[layer][0]
                if layer not in feats:  # a CLT's features of this layer may be needed before its MLP runs
                    _encode(layer, x)
                for src, w in tset.decoders_to(layer):
                    f = feats[src]
                    recon = recon.index_add(0, f.pos, f.act[:, None] * w[f.index].to(recon.dtype))
                recon = recon + tset.b_dec(layer).to(recon.dtype)
                skip = tset.W_skip(layer)
                if skip is not None:
                    recon = recon + x.to(skip.dtype) @ skip.T
            err = (out.detach().to(recon.dtype) - recon.detach()).requires_grad_(True)
            errors[layer] = err
            delta = (recon - recon.detach()) + (err - err.detach())
            return v.detach() + delta.to(v.dtype)[None]

        return fn

    def _encode(layer: int, x: torch.Tensor) -> None:
        with torch.no_grad():
            a = tset.encode(layer, x.detach())
        pos, index = a.nonzero(as_tuple=True)
        act = a[pos, index].detach().to(torch.promote_types(a.dtype, torch.float32))
        feats[layer] = Features(pos, index, act.clone().requires_grad_(True))

    def logits_reader(v: torch.Tensor, hp: Any) -> None:
        got["logits"] = v

    hooks: list[tuple[str, Any]] = [("hook_embed", leaf)]
    if "hook_pos_embed" in model.hook_names():
        hooks.append(("hook_pos_embed", leaf))
    for layer in range(c.n_layers):
        hooks.append((resid_name(layer, "attn.hook_pattern"), pattern))
        hooks.append((resid_name(layer, "hook_mlp_out"), mlp(layer)))
    hooks.append(("logits", logits_reader))

    class _Stash(dict):  # encodes a covered layer's features as soon as its MLP input is computed
        def __setitem__(self, layer: int, x: torch.Tensor) -> None:
            super().__setitem__(layer, x)
            if layer in covered:
                _encode(layer, x[0])

    inputs = _Stash()
    with torch.enable_grad(), frozen_norms(model, inputs), model.hooks(hooks):
        logits = model(ids)
    return ReplacementPass(logits[0].detach(), got["logits"][0], embeds, feats, errors,
                           {la: inputs[la][0] for la in covered})
