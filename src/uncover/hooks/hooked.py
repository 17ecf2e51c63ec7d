"""HookedModel: a Hugging Face causal LM with TransformerLens hook names.

The HF model runs its own forward; uncover only attaches PyTorch hooks for the
length of a call or ``with`` block, so with hooks that change nothing the logits are
bit-identical to the plain model. :func:`load` (``uncover.load``) wraps a model and tokenizer
from :func:`uncover.models.load.load_pretrained`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from uncover.core.config import context_length
from uncover.core.errors import TokenError, UncoverError
from uncover.core.names import GLOBAL_POINTS, HookName, block_points, resid_name
from uncover.hooks.apply import hooks_for
from uncover.hooks.cache import ActivationCache, Recorder
from uncover.hooks.engine import Attachment, ForwardState, HookFn
from uncover.hooks.interventions import Intervention
from uncover.hooks.offload import OffloadedAdapter, execution_device, is_offloaded
from uncover.hooks.pool import CachePool
from uncover.hooks.recipes import head_results, neuron_formula
from uncover.hooks.sites import Site, resolve
from uncover.hooks.tokens import Batch, check_texts, check_token_ids
from uncover.models.adapter import Adapter, ModelConfig
from uncover.models.families import family_for
from uncover.models.load import EMBEDDED_NAME, load_pretrained

Inputs = str | Sequence[str] | torch.Tensor | Batch
Names = None | str | Sequence[str] | Callable[[str], bool]


class HookedModel(nn.Module):
    """A causal LM with named hook points, caching and scoped interventions.

    The doctests' ``model`` is this model, loaded once:

    >>> import uncover
    >>> model = uncover.load()  # doctest: +SKIP
    >>> logits, cache = model.run_with_cache("The Eiffel Tower is in")
    >>> cache["blocks.0.hook_resid_post"].shape
    torch.Size([1, 6, 576])
    """

    def __init__(self, model: nn.Module, tokenizer: Any, name: str | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", "") or model.config.model_type
        self.source: str | None = None  # what uncover.load was given (None: the embedded model or built in memory)
        family = family_for(model.config.model_type)
        self.adapter = (OffloadedAdapter if is_offloaded(model) else Adapter)(model, family)
        self.state = self.adapter.forward_state = ForwardState()  # sites of flattened tensors read its batch
        self._sites: dict[str, Site] = {}
        self._formulas_checked: dict = {}  # which cache formulas reproduced this model's values (cache.Recorder)
        self.cache_pool = CachePool()
        """Buffers of dropped caches that ``run_with_cache`` copies values into (``hooks/pool.py``);
        ``model.cache_pool.clear()`` gives their memory back, ``.enabled = False`` turns reuse off."""
        self._names = self._all_names()
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    # ---- facts ---------------------------------------------------------------------------
    @property
    def cfg(self) -> ModelConfig:
        """Shapes: ``n_layers n_heads n_kv_heads d_model d_head d_mlp d_vocab``."""
        return self.adapter.cfg

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device the token embedding computes on (the first one under a ``device_map``)."""
        return execution_device(self.adapter.module(self.adapter.family.embed))

    @property
    def device_map(self) -> dict[str, Any] | None:
        """accelerate's ``{module path: device | "cpu" | "disk"}`` when loaded with a ``device_map``, else ``None``."""
        return getattr(self.model, "hf_device_map", None)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _all_names(self) -> list[str]:
        f, c = self.adapter.family, self.cfg
        names = ["hook_embed"] + (["hook_pos_embed"] if f.pos_embed else [])
        for layer in range(c.n_layers):
            for p in block_points():
                if p == "hook_resid_mid" and c.parallel_attn_mlp:
                    continue
                if p == "mlp.hook_pre_linear" and not c.gated_mlp:
                    continue
                if p == "attn.hook_attn_scores" and f.pattern_at:  # inline attention (Bloom): only the pattern
                    continue
                if p.startswith("mlp.") and c.n_experts:  # mixture of experts: router and experts instead
                    names += [resid_name(layer, q) for q in self.adapter.moe_points()] if p == "mlp.hook_pre" else []
                    continue
                names.append(resid_name(layer, p))
        names += [g for g in GLOBAL_POINTS if g not in ("hook_embed", "hook_pos_embed")]
        return names

    def hook_names(self) -> list[str]:
        """Every hook name of this model, in forward order."""
        return list(self._names)

    def site(self, name: str) -> Site:
        """Where hook ``name`` lives; raises ``UnknownHookName`` with close matches."""
        s = self._sites.get(name)
        if s is None:
            s = self._sites[name] = resolve(self.adapter, name, self._names)
        return s

    def select_names(self, names: Names) -> list[str]:
        """Expand ``names`` (``None`` = all, a string, a list, or a predicate) to valid names."""
        if names is None:
            return self.hook_names()
        if callable(names):
            return [n for n in self._names if names(n)]
        if isinstance(names, str):
            names = [names]
        for n in names:
            self.site(n)
        return list(names)

    # ---- tokens --------------------------------------------------------------------------
    def tokenize(self, inputs: Inputs, padding_side: str = "right") -> Batch:
        """Tokenize prompts into a padded :class:`Batch` on the model's device."""
        if isinstance(inputs, Batch):
            return inputs.to(self.device)
        if isinstance(inputs, torch.Tensor):
            ids = check_token_ids(inputs, self.cfg.d_vocab)
            return Batch(ids.to(self.device), torch.ones_like(ids, device=self.device))
        texts = check_texts(inputs)
        tok = self.tokenizer
        old = tok.padding_side
        tok.padding_side = padding_side
        try:
            enc = tok(texts, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = old
        return Batch(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    def to_tokens(self, inputs: str | Sequence[str]) -> torch.Tensor:
        """Token ids ``[batch, pos]`` (right-padded).

        >>> model.to_tokens("Hello world").shape
        torch.Size([1, 2])
        """
        return self.tokenize(inputs).input_ids

    def to_str_tokens(self, inputs: str | Sequence[str] | torch.Tensor) -> list[str] | list[list[str]]:
        """Each token as a string; a list of lists for a batch (padding dropped)."""
        if isinstance(inputs, str):
            return self._strs(self.to_tokens(inputs)[0].tolist())
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 1:
            return self._strs(inputs.tolist())
        b = self.tokenize(inputs)
        return [self._strs(r[m.bool()].tolist()) for r, m in zip(b.input_ids, b.attention_mask)]

    def _strs(self, ids: list[int]) -> list[str]:
        if self.tokenizer is None:
            return [f"<{i}>" for i in ids]
        return [self.tokenizer.decode([i]) for i in ids]

    def prompt_texts(self, inputs: Inputs) -> list[str]:
        """Display text of each prompt (decoded when ``inputs`` are token ids)."""
        if isinstance(inputs, str):
            return [inputs]
        if isinstance(inputs, (torch.Tensor, Batch)):
            b = self.tokenize(inputs)
            return ["".join(self._strs(r[m.bool()].tolist())) for r, m in zip(b.input_ids, b.attention_mask)]
        return list(inputs)

    def to_single_token(self, text: str) -> int:
        """The id of ``text`` if it is exactly one token; else ``TokenError`` with its split.

        A leading space matters: ``" Paris"`` and ``"Paris"`` are different tokens.
        """
        if not isinstance(text, str):
            raise TokenError(f"a token must be given as text, got {type(text).__name__} {text!r}")
        check_texts(text, "token")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            parts = [self.tokenizer.decode([i]) for i in ids]
            raise TokenError(f"{text!r} is {len(ids)} tokens {parts}, not one; try a shorter word or a leading space")
        return ids[0]

    # ---- running -------------------------------------------------------------------------
    def forward(self, inputs: Inputs) -> torch.Tensor:
        """Logits ``[batch, pos, d_vocab]`` (gradients flow when enabled and asked for)."""
        b = self.tokenize(inputs)
        return self.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits

    @contextlib.contextmanager
    def hooks(self, hooks: Sequence[tuple[str, HookFn]]) -> Iterator[HookedModel]:
        """Attach ``[(name, fn), ...]`` for the block; ``fn(value, hook) -> tensor | None``."""
        with Attachment(self, hooks):
            yield self

    @contextlib.contextmanager
    def intervene(self, interventions: Intervention | Sequence[Intervention]) -> Iterator[HookedModel]:
        """Apply intervention values (one, or a list) for the block (also inside ``generate``)."""
        if isinstance(interventions, Intervention):
            interventions = [interventions]
        elif not isinstance(interventions, Sequence) or isinstance(interventions, str):
            raise UncoverError(f"intervene takes an intervention or a list of them (Zero, Mean, Replace, Add, "
                               f"Project, Ablate), got {type(interventions).__name__}")
        with Attachment(self, hooks_for(list(interventions))):
            yield self

    def run_with_hooks(self, inputs: Inputs, hooks: Sequence[tuple[str, HookFn]]) -> torch.Tensor:
        """Logits with ``hooks`` attached for one forward pass."""
        with self.hooks(hooks):
            return self(inputs)

    def run_with_cache(
        self, inputs: Inputs, names: Names = None, *, device: str | torch.device | None = None
    ) -> tuple[torch.Tensor, ActivationCache]:
        """Logits and an :class:`ActivationCache` of the chosen hook values.

        ``names``: ``None`` (every hook), a list of names, or a predicate on names.
        ``device``: where cached tensors go (default: stay where computed; under a ``device_map``,
        gathered on :attr:`device`, the embedding's device).
        ``attn.hook_result`` values are computed on first access from the cached ``hook_z`` and
        ``W_O`` (as costly as another output projection, so only paid when used). Other values that
        uncover derives rather than reads (``hook_resid_mid``, attention scores and patterns) are also
        kept as recipes when that holds no more memory than the values would, and so is
        ``mlp.hook_post`` when ``hook_pre`` (and ``hook_pre_linear``) are cached and its formula was
        checked against the model (see :class:`~uncover.hooks.cache.Recorder`); either way
        ``cache[name]`` is bit-identical, and hooks that could write these names always see eager values.
        On the CPU, values are copies in buffers that dropped caches left (:attr:`cache_pool`), so a loop
        of calls does not take fresh memory from the kernel each time.
        """
        batch = self.tokenize(inputs)
        if device is None and self.device_map is not None:
            device = self.device
        wanted = self.select_names(names)
        lazy = [n for n in wanted if n.endswith(".attn.hook_result")]
        z_for = {n: n.replace(".attn.hook_result", ".attn.hook_z") for n in lazy}
        aux = sorted({z for z in z_for.values() if z not in wanted})
        wanted = [n for n in wanted if n not in z_for] + aux
        with self.cache_pool.session() as pool:
            rec = Recorder(device, pool)
            chosen = set(wanted)
            for n in wanted:
                if n.endswith(".mlp.hook_post"):
                    neuron_formula(self, rec, int(n.split(".")[1]), chosen)
            hooks = [(n, rec.saver(n)) for n in wanted if n != "logits"]
            with torch.no_grad(), self.hooks(hooks):
                logits = self.model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
                ).logits
        if "logits" in wanted:
            rec.put("logits", logits, reuse=False)
        store, pending = rec.store, rec.pending
        hidden = {z: store.pop(z) for z in aux}
        for n, z in z_for.items():
            pending[n] = head_results(self, n, store.get(z, hidden.get(z)))
        return logits, ActivationCache(store, self, batch, pending=pending)

    def generate(self, inputs: str | Sequence[str], max_new_tokens: int = 20, **kwargs: Any) -> str | list[str]:
        """Greedy (by default) continuation text; active hooks and interventions apply.

        Returns a string for a string prompt and a list for a list of prompts.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise UncoverError(f"max_new_tokens must be a whole number of at least 1, got {max_new_tokens!r}")
        b = self.tokenize(inputs, padding_side="left")
        room = context_length(self.model.config)
        if room is not None and b.input_ids.shape[1] + max_new_tokens > room:
            raise UncoverError(f"{b.input_ids.shape[1]} prompt tokens + max_new_tokens={max_new_tokens} exceed the "
                               f"model's context of {room} tokens; ask for at most {room - b.input_ids.shape[1]}")
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=max_new_tokens, **kwargs
            )
        texts = self.tokenizer.batch_decode(out[:, b.input_ids.shape[1] :], skip_special_tokens=True)
        return texts[0] if isinstance(inputs, str) else texts

    # ---- weights in standard form (views, no copies; offloaded weights: views of a loaded copy) --
    def W_Q(self, layer: int) -> torch.Tensor:
        """``[n_heads, d_model, d_head]``."""
        return self.adapter.W_Q(layer)

    def W_K(self, layer: int) -> torch.Tensor:
        """``[n_kv_heads, d_model, d_head]``; query head ``h`` uses key head ``h // cfg.n_groups``."""
        return self.adapter.W_K(layer)

    def W_V(self, layer: int) -> torch.Tensor:
        """``[n_kv_heads, d_model, d_head]``."""
        return self.adapter.W_V(layer)

    def W_O(self, layer: int) -> torch.Tensor:
        """``[n_heads, d_head, d_model]``."""
        return self.adapter.W_O(layer)

    def W_in(self, layer: int) -> torch.Tensor:
        """``[d_model, d_mlp]``."""
        return self.adapter.W_in(layer)

    def W_gate(self, layer: int) -> torch.Tensor | None:
        """``[d_model, d_mlp]`` or ``None`` (ungated MLP)."""
        return self.adapter.W_gate(layer)

    def W_out(self, layer: int) -> torch.Tensor:
        """``[d_mlp, d_model]``."""
        return self.adapter.W_out(layer)

    @property
    def W_E(self) -> torch.Tensor:
        """``[d_vocab, d_model]``."""
        return self.adapter.W_E

    @property
    def W_U(self) -> torch.Tensor:
        """``[d_model, d_vocab]``."""
        return self.adapter.W_U

    def norm(self, layer: int | None, which: str = "ln1") -> nn.Module:
        """The norm module ``ln1``/``ln2`` of a block, or the final norm for ``layer=None``."""
        if layer is None:
            return self.adapter.final_norm()
        f = self.adapter.family
        path = {"ln1": f.ln1, "ln2": f.ln2, "attn_post": f.attn_post_norm, "mlp_post": f.mlp_post_norm}.get(which)
        if path is None:
            raise UncoverError(f"no norm {which!r} in {f.name}; valid: ln1, ln2" + (
                ", attn_post, mlp_post" if f.attn_post_norm else ""))
        return self.adapter.sub(layer, path)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedModel({self.name!r}, family={c.family}, n_layers={c.n_layers}, n_heads={c.n_heads}, "
            f"n_kv_heads={c.n_kv_heads}, d_model={c.d_model}, d_vocab={c.d_vocab})"
        )


def load(
    name: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, int | str] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> HookedModel:
    """Load a causal LM as a :class:`HookedModel` (``uncover.load``).

    ``name``: ``None`` (the embedded SmolLM2-135M-Instruct), a ``.gguf`` file, a local
    Hugging Face model directory, or a hub id (needs the network or the HF cache); see
    :func:`uncover.models.load.load_pretrained`. ``device_map``, ``max_memory`` and ``offload_folder`` spread a
    big model over devices and offload what does not fit, through accelerate (``docs/big-models.md``): hooks,
    caches, interventions and weight edits work the same; caches are gathered on :attr:`HookedModel.device`.

    >>> model = load()
    >>> model.cfg.n_layers
    30
    """
    model, tok = load_pretrained(name, device=device, dtype=dtype, device_map=device_map, max_memory=max_memory,
                                 offload_folder=offload_folder)
    hooked = HookedModel(model, tok, name=EMBEDDED_NAME if name is None else str(name))
    hooked.source = None if name is None else str(name)
    return hooked


__all__ = ["HookedModel", "HookName", "load"]
