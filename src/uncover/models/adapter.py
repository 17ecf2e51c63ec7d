"""Adapters: where each hook point lives in a Hugging Face module tree.

A :class:`Family` is a declarative table (one small file per family under
``families/``) naming the modules of one architecture. :class:`Adapter` binds a
family to a loaded model and answers "which module, which tensor" questions for the
hook machinery and the standard-form weights. Configurations a family does not
understand are refused with :class:`~uncover.core.errors.UnsupportedModel`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from uncover.core.errors import UnsupportedModel
from uncover.models.experts import ExpertsMixin


@dataclass(frozen=True)
class Family:
    """Declarative description of one architecture family (module paths are dotted)."""

    name: str
    """Family name shown to users (``llama``, ``gpt2`` ...)."""
    model_types: tuple[str, ...]
    """HF ``config.model_type`` values this family handles."""
    layers: str
    """Path of the ``ModuleList`` of decoder blocks, from the causal-LM root."""
    embed: str
    """Token embedding module (its output is ``hook_embed``; includes any embedding scale)."""
    final_norm: str
    """Final norm module (its output is ``ln_final.hook_normalized``)."""
    unembed: str = "lm_head"
    """Unembedding module (its output is ``logits``)."""
    pos_embed: str | None = None
    """Learned absolute position embedding module, if any (``hook_pos_embed``)."""
    ln1: str | None = "input_layernorm"
    """Norm before attention, inside a block (``None``: no pre-norm, OLMo 2; ``ln1.hook_normalized`` is then
    the attention's input, the residual itself)."""
    ln2: str | None = "post_attention_layernorm"
    """Norm before the MLP, inside a block (``None``: no pre-norm; ``ln2.hook_normalized`` is the MLP's input)."""
    attn_post_norm: str | None = None
    """Norm applied to the attention output before it joins the residual (Gemma 2/3)."""
    mlp_post_norm: str | None = None
    """Norm applied to the MLP output before it joins the residual (Gemma 2/3)."""
    attn: str = "self_attn"
    q: str | None = "q_proj"
    k: str | None = "k_proj"
    v: str | None = "v_proj"
    qkv_fused: str | None = None
    """Fused QKV projection (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``)."""
    qkv_layout: str = "separate"
    """``separate``, ``gpt2``/``concat`` (q|k|v blocks of ``n_heads``, ``n_kv_heads``, ``n_kv_heads`` heads:
    GPT-2, Phi-3, GPT-BigCode and Falcon's multi-query) or ``neox`` (per head q|k|v)."""
    q_norm: str | None = None
    """Per-head query norm (Qwen3, Gemma 3); ``hook_q`` is its output."""
    k_norm: str | None = None
    qk_norm_whole: bool = False
    """Whether the q/k norms normalise the whole projection ``[batch, pos, heads * d_head]`` (OLMo 2)."""
    qk_norm_heads_first: bool = False
    """Whether the q/k norms see ``[batch, head, pos, d_head]`` (Gemma 3) rather than ``[batch, pos, head, d_head]``."""
    o: str = "o_proj"
    mlp: str = "mlp"
    mlp_in: str = "up_proj"
    mlp_gate: str | None = "gate_proj"
    mlp_out: str = "down_proj"
    mlp_fused_gate_up: bool = False
    """``mlp_in`` computes ``[gate | up]`` in one linear (Phi-3, GLM-4): its first half is ``mlp.hook_pre``."""
    embed_norm: str | None = None
    """A norm on the embeddings before the first block (Bloom): ``hook_embed`` is its output, so the residual
    stream still decomposes into ``hook_embed`` plus the blocks' outputs."""
    attn_out_at: str | None = None
    """Module inside the block whose output is ``hook_attn_out`` where the attention module adds the residual
    itself (Bloom: ``self_attention.dense``)."""
    pattern_at: str | None = None
    """Module inside the attention whose output is the pattern where the attention is computed inline, not by
    an attention function (Bloom: ``attention_dropout``); such families have no ``hook_attn_scores``."""
    mlp_out_at: str | None = None
    """Module inside the block whose output is ``hook_mlp_out`` where the MLP has no module of its own
    (OPT: ``fc2``; then ``mlp`` is ``""``, the block itself)."""
    mlp_tokens_flat: bool = False
    """The block flattens ``[batch, pos]`` into one axis around ln2 and the MLP (OPT): their hooks unflatten it."""
    experts: str | None = None
    """Mixture of experts: the fused experts module inside ``mlp`` (``gate_up_proj [E, 2F, d]``, ``down_proj
    [E, d, F]``, or transposed with biases as the module's ``is_transposed``/``has_bias`` say (gpt-oss); called
    with ``(x, top_k_index, top_k_weights)``); ``mlp`` is then the sparse MoE block."""
    router: str = "gate"
    """Mixture of experts: the router inside ``mlp`` (returns ``(logits, top_k_weights, top_k_index)``)."""
    route: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    """Mixture of experts: the router's own choice from its logits, ``route(router, logits [tokens, n_experts])
    -> (top_k_weights, top_k_index)``; a write to ``mlp.hook_router`` re-routes through it."""
    attn_sinks: str | None = None
    """Per-head learned sink logits on the attention module (gpt-oss ``sinks``): a key every query may attend to
    that carries no value, so pattern rows sum to less than 1."""
    shared_expert: str | None = None
    """Mixture of experts: an always-on expert inside ``mlp`` (Qwen2-MoE), gated by ``shared_expert_gate``."""
    shared_expert_gate: str | None = None
    pos_offset: int = 0
    """Rows of the learned position table before position 0 (OPT: 2)."""
    mlp_out_mutated: bool = False
    """The block adds into the MLP's output tensor in place (Falcon), so its hook reads a copy."""
    kv_heads: Callable[[Any], int | None] = lambda cfg: None
    """Number of key/value heads where the config does not say it as ``num_key_value_heads`` (multi-query)."""
    norm_kind: str = "rms"
    """``rms`` (weight * x/rms), ``rms1p`` ((1+weight) * x/rms, Gemma) or ``layer`` (LayerNorm)."""
    conv1d: bool = False
    """Weights stored as ``[in, out]`` (GPT-2 ``Conv1D``) instead of ``nn.Linear``'s ``[out, in]``."""
    parallel: Callable[[Any], bool] = lambda cfg: False
    """Whether attention and MLP read the same residual (no ``hook_resid_mid``)."""
    refuse: Callable[[Any], list[str]] = lambda cfg: []
    """Return the config options this family does not understand (empty when fine)."""
    embed_multiplier: Callable[[Any], float] = lambda cfg: 1.0
    """Factor the model applies to the embedding module's output outside it (Granite); ``hook_embed`` and
    :attr:`Adapter.embed_scale` include it."""
    residual_multiplier: Callable[[Any], float] = lambda cfg: 1.0
    """Factor the block applies to the attention and MLP outputs before adding them (Granite): ``hook_attn_out``,
    ``hook_mlp_out``, ``hook_result`` and ``W_O``/``b_O``/``W_out``/``b_out`` (scaled copies) include it."""
    logit_scale: Callable[[Any], float] = lambda cfg: 1.0
    """Factor the model applies to the unembedding's output (Cohere's ``logit_scale``); ``logits`` and
    :meth:`Adapter.logit_scale` include it, so DLA and decoded residuals give the model's own logits."""
    final_softcap_attr: str | None = None
    """Config attribute of the final-logit soft-capping value, if any."""
    extra: dict[str, Any] = field(default_factory=dict)


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Follow a dotted path (``model.layers``) from ``root``."""
    mod: Any = root
    if not path:
        return mod
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


@dataclass(frozen=True)
class ModelConfig:
    """Shape facts of a model, in TransformerLens names."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    family: str
    model_type: str
    parallel_attn_mlp: bool
    gated_mlp: bool
    norm_kind: str
    eps: float
    n_experts: int = 0
    """Routed experts per MoE layer (0: a dense MLP); ``d_mlp`` is then one expert's width."""
    top_k: int = 0

    @property
    def n_groups(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


def _first(cfg: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


class Adapter(ExpertsMixin):
    """A family bound to one loaded HF causal LM.

    Gives modules per layer and standard-form weight views (no copies).
    """

    def __init__(self, model: nn.Module, family: Family):
        self.model = model
        self.family = family
        self.forward_state: Any = None
        """The hooked model's current forward (its ``batch``), set by ``HookedModel``."""
        hf = model.config
        problems = family.refuse(hf)
        if problems:
            raise UnsupportedModel(
                f"{family.name} adapter does not support: {'; '.join(problems)}"
            )
        d_model = _first(hf, "hidden_size", "n_embd")
        n_heads = _first(hf, "num_attention_heads", "n_head")
        n_kv = family.kv_heads(hf) or _first(hf, "num_key_value_heads", default=n_heads)
        d_head = _first(hf, "head_dim", default=d_model // n_heads)
        moe = family.experts is not None
        d_mlp = _first(hf, *(("moe_intermediate_size",) if moe else ()), "intermediate_size", "n_inner", "ffn_dim",
                       default=4 * d_model)
        eps = _first(hf, "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", default=1e-5)
        self.cfg = ModelConfig(
            n_layers=_first(hf, "num_hidden_layers", "n_layer"),
            n_heads=n_heads,
            n_kv_heads=n_kv,
            d_model=d_model,
            d_head=d_head,
            d_mlp=d_mlp,
            d_vocab=hf.vocab_size,
            family=family.name,
            model_type=hf.model_type,
            parallel_attn_mlp=bool(family.parallel(hf)),
            gated_mlp=family.mlp_gate is not None or family.mlp_fused_gate_up,
            norm_kind=family.norm_kind,
            eps=float(eps),
            n_experts=int(_first(hf, "num_local_experts", "num_experts", default=0)) if moe else 0,
            top_k=int(_first(hf, "num_experts_per_tok", default=0)) if moe else 0,
        )
        self.layers = get_module(model, family.layers)
        if family.q_norm and not hasattr(self.attn(0) if len(self.layers) else None, family.q_norm):
            self.family = family = replace(family, q_norm=None, k_norm=None)  # optional q/k norms (Cohere)
        if len(self.layers) != self.cfg.n_layers:
            raise UnsupportedModel(
                f"config says {self.cfg.n_layers} layers but {family.layers} has {len(self.layers)}"
            )
        self.check_experts()

    # ---- modules -------------------------------------------------------------------------
    def block(self, layer: int) -> nn.Module:
        return self.layers[layer]

    def sub(self, layer: int, path: str | None) -> nn.Module | None:
        """Module at ``path`` inside block ``layer`` (``None`` if ``path`` is ``None``)."""
        if path is None:
            return None
        return get_module(self.layers[layer], path)

    def attn(self, layer: int) -> nn.Module:
        return get_module(self.layers[layer], self.family.attn)

    def attn_part(self, layer: int, name: str | None) -> nn.Module | None:
        return None if name is None else get_module(self.attn(layer), name)

    def mlp(self, layer: int) -> nn.Module:
        return get_module(self.layers[layer], self.family.mlp)

    def mlp_out_module(self, layer: int) -> nn.Module:
        """The module whose output is ``hook_mlp_out``: the post-norm, the MLP's last linear or the MLP."""
        f = self.family
        if f.mlp_post_norm:
            return get_module(self.layers[layer], f.mlp_post_norm)
        return get_module(self.layers[layer], f.mlp_out_at) if f.mlp_out_at else self.mlp(layer)

    def mlp_part(self, layer: int, name: str | None) -> nn.Module | None:
        if self.cfg.n_experts and name in (self.family.mlp_in, self.family.mlp_gate, self.family.mlp_out):
            raise self.no_single_mlp("its MLP weights")
        return None if name is None else get_module(self.mlp(layer), name)

    def module(self, path: str) -> nn.Module:
        return get_module(self.model, path)

    # ---- weights in standard form (views of the model's parameters) ------------------------
    def _linear_w(self, mod: nn.Module) -> torch.Tensor:
        """Weight as ``[in, out]``."""
        return mod.weight if self.family.conv1d else mod.weight.T

    def _qkv_w(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W_Q, W_K, W_V)`` as ``[d_model, n * d_head]`` views."""
        f, c = self.family, self.cfg
        if f.qkv_layout == "separate":
            return tuple(self._linear_w(self.attn_part(layer, n)) for n in (f.q, f.k, f.v))  # type: ignore[return-value]
        w = self._linear_w(self.attn_part(layer, f.qkv_fused))  # [d_model, (n_heads + 2 n_kv) * d_head]
        if f.qkv_layout in ("gpt2", "concat"):
            return tuple(w.split(self.qkv_sizes, dim=1))  # type: ignore[return-value]
        w = w.view(c.d_model, c.n_heads, 3, c.d_head)
        return tuple(w[:, :, i, :] for i in range(3))  # type: ignore[return-value]

    def _qkv_b(self, layer: int) -> tuple[torch.Tensor | None, ...]:
        f, c = self.family, self.cfg
        if f.qkv_layout == "separate":
            return tuple(getattr(self.attn_part(layer, n), "bias", None) for n in (f.q, f.k, f.v))
        b = self.attn_part(layer, f.qkv_fused).bias
        if b is None:
            return (None, None, None)
        if f.qkv_layout in ("gpt2", "concat"):
            return tuple(b.split(self.qkv_sizes))
        b = b.view(c.n_heads, 3, c.d_head)
        return tuple(b[:, i, :] for i in range(3))

    @property
    def qkv_sizes(self) -> list[int]:
        """Widths of the q, k and v blocks of a fused ``gpt2``/``concat`` projection."""
        c = self.cfg
        return [c.n_heads * c.d_head, c.n_kv_heads * c.d_head, c.n_kv_heads * c.d_head]

    def W_Q(self, layer: int) -> torch.Tensor:
        """``[n_heads, d_model, d_head]``."""
        return self._heads_in(self._qkv_w(layer)[0], self.cfg.n_heads)

    def W_K(self, layer: int) -> torch.Tensor:
        """``[n_kv_heads, d_model, d_head]`` (query head ``h`` reads key head ``h // n_groups``)."""
        return self._heads_in(self._qkv_w(layer)[1], self.cfg.n_kv_heads)

    def W_V(self, layer: int) -> torch.Tensor:
        """``[n_kv_heads, d_model, d_head]``."""
        return self._heads_in(self._qkv_w(layer)[2], self.cfg.n_kv_heads)

    def b_QKV(self, layer: int) -> tuple[torch.Tensor | None, ...]:
        """Biases of Q, K, V as ``[n, d_head]`` (``None`` where absent)."""
        out = []
        for b, n in zip(self._qkv_b(layer), (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.n_kv_heads)):
            out.append(None if b is None else b.reshape(n, self.cfg.d_head))
        return tuple(out)

    def _heads_in(self, w: torch.Tensor, n: int) -> torch.Tensor:
        # w: [d_model, n * d_head] (possibly [d_model, n, d_head] already)
        return w.reshape(self.cfg.d_model, n, self.cfg.d_head).permute(1, 0, 2)

    def W_O(self, layer: int) -> torch.Tensor:
        """``[n_heads, d_head, d_model]``."""
        w = self._linear_w(self.attn_part(layer, self.family.o))  # [n_heads*d_head, d_model]
        return self._resid_scaled(w.reshape(self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model))

    def b_O(self, layer: int) -> torch.Tensor | None:
        """``[d_model]`` or ``None``."""
        return self._resid_scaled(getattr(self.attn_part(layer, self.family.o), "bias", None))

    def W_in(self, layer: int) -> torch.Tensor:
        """``[d_model, d_mlp]`` (the linear, non-gate input of a gated MLP)."""
        w = self._linear_w(self.mlp_part(layer, self.family.mlp_in))
        return w[:, self.cfg.d_mlp:] if self.family.mlp_fused_gate_up else w

    def W_gate(self, layer: int) -> torch.Tensor | None:
        """``[d_model, d_mlp]`` or ``None`` for ungated MLPs."""
        if self.family.mlp_fused_gate_up:
            return self._linear_w(self.mlp_part(layer, self.family.mlp_in))[:, : self.cfg.d_mlp]
        m = self.mlp_part(layer, self.family.mlp_gate)
        return None if m is None else self._linear_w(m)

    def W_out(self, layer: int) -> torch.Tensor:
        """``[d_mlp, d_model]``."""
        return self._resid_scaled(self._linear_w(self.mlp_part(layer, self.family.mlp_out)))

    def b_out(self, layer: int) -> torch.Tensor | None:
        return self._resid_scaled(getattr(self.mlp_part(layer, self.family.mlp_out), "bias", None))

    @property
    def W_E(self) -> torch.Tensor:
        """``[d_vocab, d_model]`` (without any embedding scale; see ``embed_scale``)."""
        return self.module(self.family.embed).weight

    @property
    def embed_scale(self) -> float:
        """Multiplier the embedding module applies (Gemma: sqrt(d_model)), else 1."""
        module = float(getattr(self.module(self.family.embed), "scalar_embed_scale", 1.0))
        return module * float(self.family.embed_multiplier(self.model.config))

    @property
    def residual_multiplier(self) -> float:
        """Factor on the attention and MLP outputs as they join the residual (1 except Granite)."""
        return float(self.family.residual_multiplier(self.model.config))

    def _resid_scaled(self, t: torch.Tensor | None) -> torch.Tensor | None:
        rm = self.residual_multiplier
        return t if t is None or rm == 1.0 else t * rm

    @property
    def W_pos(self) -> torch.Tensor | None:
        """``[n_ctx, d_model]`` or ``None``."""
        if self.family.pos_embed is None:
            return None
        return self.module(self.family.pos_embed).weight[self.family.pos_offset:]

    @property
    def W_U(self) -> torch.Tensor:
        """``[d_model, d_vocab]``."""
        return self.module(self.family.unembed).weight.T

    @property
    def b_U(self) -> torch.Tensor | None:
        return getattr(self.module(self.family.unembed), "bias", None)

    def norm_params(self, mod: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
        """``(effective weight, bias, eps)`` of a norm module, so ``y = w * x̂ + b``."""
        w = getattr(mod, "weight", None)
        if w is not None and self.family.norm_kind == "rms1p":
            w = 1.0 + w.float()
        eps = getattr(mod, "eps", None) or getattr(mod, "variance_epsilon", None) or self.cfg.eps
        return w, getattr(mod, "bias", None), float(eps)

    def final_norm(self) -> nn.Module:
        return self.module(self.family.final_norm)

    @property
    def logit_scale(self) -> float:
        """Factor applied to ``x @ W_U + b_U`` to give the logits (1 except Cohere)."""
        return float(self.family.logit_scale(self.model.config))

    @property
    def final_softcap(self) -> float | None:
        a = self.family.final_softcap_attr
        return None if a is None else getattr(self.model.config, a, None)
