"""Where each hook name lives: module, hook direction and tensor view.

A :class:`Site` says which module to hook (``out``: forward hook on its output,
``in``: pre-hook on its first input) and how to read the named value out of that
module tensor (``extract``) and write a new value back (``insert``). Special kinds:
``mid`` (residual after attention, derived from ``resid_pre`` + attention output),
``result`` (per-head outputs, from ``o_proj``'s input and ``W_O``) and ``attnfn``
(scores and pattern, from the attention-implementation wrapper).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from uncover.core.errors import UnknownHookName, did_you_mean
from uncover.core.names import HookName
from uncover.models.adapter import Adapter, get_module

Extract = Callable[[torch.Tensor], torch.Tensor]
Insert = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _put(t: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    if new.shape != t.shape:
        raise ValueError(f"hook returned shape {tuple(new.shape)}, expected {tuple(t.shape)}")
    return new


@dataclass(frozen=True)
class Site:
    """One hook point on the module tree."""

    module: nn.Module
    kind: str
    """``out``, ``in``, ``mid``, ``result`` or ``attnfn``."""
    extract: Extract = _same
    insert: Insert = _put
    order: int = 0
    """Order among names sharing a module hook (forward order)."""
    rest: Callable[[torch.Tensor], tuple] | None = None
    """For a module returning a tuple whose first element is this site (a router's logits): the other
    elements recomputed from a written first one (the top-k weights and indices: writing re-routes)."""


def _heads(n: int, d: int) -> tuple[Extract, Insert]:
    def ext(t: torch.Tensor) -> torch.Tensor:
        return t.view(*t.shape[:-1], n, d)

    def ins(t: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return _put(ext(t), new).reshape(t.shape)

    return ext, ins


def _heads_first() -> tuple[Extract, Insert]:
    def ext(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2)

    def ins(t: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return _put(ext(t), new).transpose(1, 2)

    return ext, ins


def _slice(lo: int, hi: int, n: int, d: int) -> tuple[Extract, Insert]:
    """Slice ``[lo, hi)`` of the last axis, viewed as ``n`` heads of size ``d`` (GPT-2 c_attn)."""

    def ext(t: torch.Tensor) -> torch.Tensor:
        return t[..., lo:hi].unflatten(-1, (n, d))

    def ins(t: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        out[..., lo:hi] = _put(ext(t), new).flatten(-2)
        return out

    return ext, ins


def _neox(i: int, n: int, d: int) -> tuple[Extract, Insert]:
    """Part ``i`` of a per-head interleaved q|k|v projection (GPT-NeoX)."""

    def ext(t: torch.Tensor) -> torch.Tensor:
        return t.view(*t.shape[:-1], n, 3 * d)[..., i * d : (i + 1) * d]

    def ins(t: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        out.view(*t.shape[:-1], n, 3 * d)[..., i * d : (i + 1) * d] = _put(ext(t), new)
        return out

    return ext, ins


def _scaled(s: float) -> tuple[Extract, Insert]:
    """A module output the model multiplies by ``s`` before using it (Cohere's logit scale)."""
    if s == 1.0:
        return _same, _put
    return (lambda t: t * s), (lambda t, new: _put(t, new) / s)


def _flat_tokens(a: Adapter) -> tuple[Extract, Insert]:
    """``[batch * pos, d]`` tensors (OPT's MLP) viewed as ``[batch, pos, d]`` with the current forward's batch."""

    def ext(t: torch.Tensor) -> torch.Tensor:
        return t.view(a.forward_state.batch, -1, t.shape[-1]) if t.dim() == 2 else t

    def ins(t: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return _put(ext(t), new).reshape(t.shape)

    return ext, ins


def _moe_sites(a: Adapter, layer: int) -> dict[str, Callable[[], Site | None]]:
    """Mixture of experts: router logits ``[batch, pos, n_experts]`` (written logits re-route through the family's
    ``route``), each expert's weighted output ``[batch, pos, n_experts, d_model]`` (kind ``experts``: computed from
    the experts module's inputs), the shared expert."""
    f = a.family
    if not a.cfg.n_experts:
        return {}
    mlp = a.mlp(layer)

    def reroute(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a.route(layer, logits)

    sites: dict[str, Callable[[], Site | None]] = {
        "mlp.hook_router": lambda: Site(get_module(mlp, f.router), "out", *_flat_tokens(a), rest=reroute),
        "mlp.hook_expert_out": lambda: Site(get_module(mlp, f.experts), "experts"),  # type: ignore[arg-type]
    }
    if f.shared_expert:
        sites["mlp.hook_shared_expert"] = lambda: Site(get_module(mlp, f.shared_expert), "out", *_flat_tokens(a))
        sites["mlp.hook_shared_gate"] = lambda: Site(get_module(mlp, f.shared_expert_gate), "out", *_flat_tokens(a))
    return sites


def _qkv_site(a: Adapter, layer: int, which: int) -> Site:
    f, c = a.family, a.cfg
    n = c.n_heads if which == 0 else c.n_kv_heads
    norm = (f.q_norm, f.k_norm, None)[which]
    if norm is not None:
        whole = _heads(n, c.d_head) if f.qk_norm_whole else (_same, _put)  # OLMo 2: one norm over all heads
        ext, ins = _heads_first() if f.qk_norm_heads_first else whole
        return Site(a.attn_part(layer, norm), "out", ext, ins, order=which)
    if f.qkv_layout == "separate":
        return Site(a.attn_part(layer, (f.q, f.k, f.v)[which]), "out", *_heads(n, c.d_head), order=which)
    mod = a.attn_part(layer, f.qkv_fused)
    if f.qkv_layout in ("gpt2", "concat"):  # q | k | v blocks (k and v narrower with multi-query attention)
        lo = sum(a.qkv_sizes[:which])
        return Site(mod, "out", *_slice(lo, lo + a.qkv_sizes[which], n, c.d_head), order=which)
    return Site(mod, "out", *_neox(which, n, c.d_head), order=which)


def _mlp_in_site(a: Adapter, layer: int, which: int) -> Site:
    """``mlp.hook_pre`` (``which=0``: the gate, or the only input) or ``mlp.hook_pre_linear`` (``1``)."""
    f, d = a.family, a.cfg.d_mlp
    if f.mlp_fused_gate_up:  # one linear computes [gate | up] (Phi-3, GLM-4)
        ext, ins = _slice(which * d, (which + 1) * d, 1, d)
        return Site(a.mlp_part(layer, f.mlp_in), "out", lambda t: ext(t).squeeze(-2),
                    lambda t, new: ins(t, new.unsqueeze(-2)), order=which)
    flat = _flat_tokens(a) if f.mlp_tokens_flat else ()
    return Site(a.mlp_part(layer, (f.mlp_gate or f.mlp_in) if which == 0 else f.mlp_in), "out", *flat)


def resolve(a: Adapter, name: str, valid: list[str]) -> Site:
    """The site of hook ``name`` on the adapter's model; unknown names list close valid ones."""
    h = HookName.parse(name)
    f, c = a.family, a.cfg
    site: Site | None = None
    if name not in valid:  # also refuses odd spellings such as blocks.01.hook_resid_pre
        pass
    elif h.layer is None:
        site = {
            "hook_embed": lambda: (Site(a.module(f.embed_norm), "out") if f.embed_norm else
                                   Site(a.module(f.embed), "out", *_scaled(float(f.embed_multiplier(a.model.config))))),
            "hook_pos_embed": lambda: Site(a.module(f.pos_embed), "out") if f.pos_embed else None,
            "ln_final.hook_normalized": lambda: Site(a.final_norm(), "out"),
            "logits": lambda: Site(a.module(f.unembed), "out", *_scaled(a.logit_scale)),
        }.get(h.point, lambda: None)()
    elif 0 <= h.layer < c.n_layers:
        layer, p = h.layer, h.point
        attn_out_mod = a.sub(layer, f.attn_post_norm or f.attn_out_at) if f.attn_post_norm or f.attn_out_at else (
            a.attn(layer))
        mlp_out_mod = a.mlp_out_module(layer)
        flat = _flat_tokens(a) if f.mlp_tokens_flat else ()
        rm = _scaled(a.residual_multiplier)  # Granite: the block scales what attention and MLP add
        mlp_view = flat or ((torch.clone, _put) if f.mlp_out_mutated else rm)  # Falcon adds into it in place
        table: dict[str, Callable[[], Site | None]] = {
            "hook_resid_pre": lambda: Site(a.block(layer), "in"),
            "hook_resid_post": lambda: Site(a.block(layer), "out"),
            "hook_attn_out": lambda: Site(attn_out_mod, "out", *rm),
            "hook_resid_mid": lambda: None if c.parallel_attn_mlp else Site(attn_out_mod, "mid", *rm, order=1),
            "hook_mlp_out": lambda: Site(mlp_out_mod, "out", *mlp_view),
            "ln1.hook_normalized": lambda: Site(a.sub(layer, f.ln1), "out") if f.ln1 else Site(a.attn(layer), "in"),
            "ln2.hook_normalized": lambda: (Site(a.sub(layer, f.ln2), "out", *flat) if f.ln2
                                            else Site(a.mlp(layer), "in")),
            "attn.hook_q": lambda: _qkv_site(a, layer, 0),
            "attn.hook_k": lambda: _qkv_site(a, layer, 1),
            "attn.hook_v": lambda: _qkv_site(a, layer, 2),
            "attn.hook_z": lambda: Site(a.attn_part(layer, f.o), "in", *_heads(c.n_heads, c.d_head)),
            "attn.hook_result": lambda: Site(a.attn_part(layer, f.o), "result", *rm),
            "attn.hook_attn_scores": lambda: None if f.pattern_at else Site(a.attn(layer), "attnfn", order=0),
            "attn.hook_pattern": lambda: (Site(a.attn_part(layer, f.pattern_at), "out") if f.pattern_at
                                          else Site(a.attn(layer), "attnfn", order=1)),
            "mlp.hook_pre": lambda: _mlp_in_site(a, layer, 0),
            "mlp.hook_pre_linear": lambda: _mlp_in_site(a, layer, 1) if c.gated_mlp else None,
            "mlp.hook_post": lambda: Site(a.mlp_part(layer, f.mlp_out), "in", *flat),
            **_moe_sites(a, layer),
        }
        site = table.get(p, lambda: None)()
    if site is None:
        msg = did_you_mean(name, valid, "hook name")
        if h.layer is not None and h.point == "hook_resid_mid" and c.parallel_attn_mlp:
            msg += (
                f" ({c.family} runs attention and MLP in parallel on the same residual, so there is no "
                "resid_mid; use hook_attn_out and hook_mlp_out)"
            )
        elif h.layer is not None and not 0 <= h.layer < c.n_layers:
            msg += f" (layers are 0..{c.n_layers - 1})"
        elif h.point in ("mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post") and c.n_experts:
            msg += f" ({c.family} has a mixture-of-experts MLP: use mlp.hook_expert_out and mlp.hook_router)"
        elif h.point == "mlp.hook_pre_linear" and not c.gated_mlp:
            msg += f" ({c.family} has no gated MLP, so mlp.hook_pre is the whole MLP input)"
        raise UnknownHookName(msg)
    return site
