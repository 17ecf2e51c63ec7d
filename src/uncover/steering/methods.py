"""Steering methods as scoped hook sets: ActAdd, CAA, RepE control, ITI, directional ablation.

- :class:`ActAdd` (Turner et al. 2023, "Activation Addition"): the position-wise difference of
  the residual stream of two prompts (``"Love"`` − ``"Hate"``) at one layer, added at the
  *first* positions of the prompt (as in the paper), times a coefficient.
- :class:`CAA` (Rimsky et al. 2024, "Steering Llama 2 via Contrastive Activation Addition"):
  the mean difference over many contrast pairs at the answer token, added at every position
  after the prompt (from the prompt's last token on, so the first new token is steered too).
- :class:`Control` (Zou et al. 2023, "Representation Engineering"): reading vectors applied
  at chosen layers with the paper's operators: ``linear`` (``h + αv``), ``piecewise``
  (``h + α·sign(h·v)·v``) and ``projection`` (``h − (h·v̂)v̂``), at every position.
- :class:`ITI` (Li et al. 2023, "Inference-Time Intervention"): shifts along per-head
  mass-mean directions of the top-K attention heads; see :mod:`uncover.steering.iti`.
- :class:`DirectionalAblation` (Arditi et al. 2024, "Refusal ... Is Mediated by a Single
  Direction"): the direction is projected out of every residual write (embeddings, every
  attention and MLP output), so no layer ever sees a component along it.

Every method is a value whose :meth:`Steering.hooks` builds hook functions; :func:`steering`
attaches them for a ``with`` block (removed in ``finally``, so the model is never left
modified, even on error), and :func:`generate` runs steered generation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from uncover.core.errors import UncoverError
from uncover.hooks.engine import HookPoint
from uncover.steering.vectors import SteeringVector

OPERATORS = ("linear", "piecewise", "projection")


def _real_index(hp: HookPoint, batch: int, q_len: int, device: torch.device) -> torch.Tensor:
    """``[batch, q_len]`` index of each column among its row's real tokens (``-1`` for padding)."""
    st = hp.state
    mask = st.attention_mask
    if mask is None or mask.shape[0] != batch:
        return torch.arange(st.offset, st.offset + q_len, device=device).expand(batch, q_len)
    m = mask.to(device).long()
    rank = m.cumsum(-1) - 1
    rank = torch.where(m.bool(), rank, torch.full_like(rank, -1))
    return rank[:, st.offset : st.offset + q_len]


@dataclass
class Steering:
    """Base class: something that builds hook functions for a steered forward pass."""

    def hooks(self, model: Any, prompt_lens: torch.Tensor | None = None) -> list[tuple[str, Any]]:
        """``[(hook name, fn), ...]``; ``prompt_lens [batch]`` are real prompt lengths (``None``: no prompt)."""
        raise NotImplementedError

    def scaled(self, s: float) -> Steering:
        """The same steering with its strength multiplied by ``s``."""
        raise NotImplementedError


def _check_vec(v: torch.Tensor, what: str) -> torch.Tensor:
    if not bool(torch.isfinite(v).all()):
        raise UncoverError(f"{what} contains NaN or inf")
    if float(v.norm()) == 0.0:
        raise UncoverError(f"{what} is zero; nothing to steer with")
    return v


@dataclass
class ActAdd(Steering):
    """Add ``coeff × diff[j]`` at real position ``j`` (``j < k``) of ``blocks.{layer}.{point}``.

    Attributes:
        diff: ``[k, d_model]`` position-wise difference of the two prompts' residuals.
        layer: the block; point: ``hook_resid_pre`` (default, as in the paper) or ``hook_resid_post``.
        coeff: the coefficient.
    """

    diff: torch.Tensor
    layer: int
    coeff: float = 1.0
    point: str = "hook_resid_pre"

    def __post_init__(self) -> None:
        if self.diff.dim() != 2:
            raise UncoverError(f"ActAdd diff must be [k, d_model], got {tuple(self.diff.shape)}")
        _check_vec(self.diff, "ActAdd vector")

    def scaled(self, s: float) -> ActAdd:
        return replace(self, coeff=self.coeff * s)

    def hooks(self, model: Any, prompt_lens: torch.Tensor | None = None) -> list[tuple[str, Any]]:
        _layer_ok(model, self.layer)
        k = self.diff.shape[0]

        def fn(v: torch.Tensor, hp: HookPoint) -> torch.Tensor | None:
            cols = hp.state.columns(list(range(k)), v.device)  # [batch, k]
            if not bool((cols >= 0).any()):
                return None
            out = v.clone()
            add = (self.coeff * self.diff).to(v)
            for j in range(k):
                rows = (cols[:, j] >= 0).nonzero().flatten()
                out[rows, cols[rows, j]] += add[j]
            return out

        return [(f"blocks.{self.layer}.{self.point}", fn)]


@dataclass
class CAA(Steering):
    """Add ``multiplier × vector[l]`` at every position from each prompt's last token on.

    Without prompt lengths (a plain forward over text) every position is steered.
    """

    vector: SteeringVector
    multiplier: float = 1.0

    def scaled(self, s: float) -> CAA:
        return replace(self, multiplier=self.multiplier * s)

    def hooks(self, model: Any, prompt_lens: torch.Tensor | None = None) -> list[tuple[str, Any]]:
        self.vector.check(model)
        out = []
        for layer, vec in self.vector.vectors.items():
            out.append((self.vector.hook(layer), _add_after(vec * self.multiplier, prompt_lens)))
        return out


def _add_after(vec: torch.Tensor, prompt_lens: torch.Tensor | None) -> Any:
    def fn(v: torch.Tensor, hp: HookPoint) -> torch.Tensor:
        add = vec.to(v)
        if prompt_lens is None:
            return v + add
        idx = _real_index(hp, v.shape[0], v.shape[1], v.device)  # [batch, pos]
        on = idx >= (prompt_lens.to(v.device)[:, None] - 1)
        return v + on.unsqueeze(-1).to(v.dtype) * add

    return fn


@dataclass
class Control(Steering):
    """RepE control: ``operator`` with strength ``alpha`` at each layer of ``vector`` (every position)."""

    vector: SteeringVector
    operator: str = "linear"
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise UncoverError(f"unknown operator {self.operator!r}; valid: {', '.join(OPERATORS)}")

    def scaled(self, s: float) -> Control:
        return replace(self, alpha=self.alpha * s)

    def hooks(self, model: Any, prompt_lens: torch.Tensor | None = None) -> list[tuple[str, Any]]:
        self.vector.check(model)
        return [(self.vector.hook(la), _operator(self.operator, vec, self.alpha))
                for la, vec in self.vector.vectors.items()]


def _operator(op: str, vec: torch.Tensor, alpha: float) -> Any:
    def fn(v: torch.Tensor, hp: HookPoint) -> torch.Tensor:
        r = vec.to(v)
        if op == "linear":
            return v + alpha * r
        u = r / r.norm()
        if op == "piecewise":
            return v + alpha * torch.sign(v @ u).unsqueeze(-1) * r
        return v - (v @ u).unsqueeze(-1) * u

    return fn


@dataclass
class DirectionalAblation(Steering):
    """Project ``direction`` (``[d_model]``) out of the embeddings and every attention and MLP output.

    ``strength`` 1 removes the component; other values remove that fraction (for sweeps).
    """

    direction: torch.Tensor
    strength: float = 1.0

    def __post_init__(self) -> None:
        if self.direction.dim() != 1:
            raise UncoverError(f"direction must be [d_model], got {tuple(self.direction.shape)}")
        _check_vec(self.direction, "ablation direction")

    def scaled(self, s: float) -> DirectionalAblation:
        return replace(self, strength=self.strength * s)

    def hooks(self, model: Any, prompt_lens: torch.Tensor | None = None) -> list[tuple[str, Any]]:
        if self.direction.shape[0] != model.cfg.d_model:
            raise UncoverError(f"direction size {self.direction.shape[0]} does not match d_model {model.cfg.d_model}")
        u = self.direction.float() / self.direction.float().norm()
        names = [n for n in ("hook_embed", "hook_pos_embed") if n in model.hook_names()]
        for la in range(model.cfg.n_layers):
            names += [f"blocks.{la}.hook_attn_out", f"blocks.{la}.hook_mlp_out"]
        s = self.strength

        def fn(v: torch.Tensor, hp: HookPoint) -> torch.Tensor:
            uu = u.to(v)
            return v - s * (v @ uu).unsqueeze(-1) * uu

        return [(n, fn) for n in names]


def _layer_ok(model: Any, layer: int) -> None:
    n = model.cfg.n_layers
    if not 0 <= layer < n:
        raise UncoverError(f"layer {layer} out of range; this model has layers 0..{n - 1}")


@contextlib.contextmanager
def steering(model: Any, steer: Steering | None, prompt_lens: torch.Tensor | None = None) -> Iterator[Any]:
    """Attach ``steer``'s hooks for the block; the model is restored on exit, even on error.

    >>> with steering(model, CAA(vector, multiplier=4)):  # doctest: +SKIP
    ...     logits = model("I think that")
    """
    if steer is None:
        yield model
        return
    with model.hooks(steer.hooks(model, prompt_lens)):
        yield model


def generate(model: Any, prompts: str | Sequence[str], steer: Steering | None, max_new_tokens: int = 20,
             **kwargs: Any) -> list[str]:
    """Greedy continuations of ``prompts`` under ``steer`` (``None``: unsteered), one string per prompt.

    >>> generate(model, ["I think that"], actadd(model, "Love", "Hate", layer=6, coeff=5))  # doctest: +SKIP
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts:
        raise UncoverError("no prompts given")
    lens = model.tokenize(texts, padding_side="left").lengths
    with steering(model, steer, lens):
        out = model.generate(texts, max_new_tokens=max_new_tokens, **kwargs)
    return list(out)


# ---- building steering values from prompts and data ------------------------------------------
def actadd(model: Any, positive: str, negative: str, *, layer: int, coeff: float = 5.0,
           point: str = "hook_resid_pre") -> ActAdd:
    """ActAdd from one prompt pair: the shorter prompt is right-padded with space tokens, as in the paper.

    >>> steer = actadd(model, "Love", "Hate", layer=6, coeff=5)  # doctest: +SKIP
    """
    _layer_ok(model, layer)
    tok = model.tokenizer
    a = tok(positive)["input_ids"]
    b = tok(negative)["input_ids"]
    pad = tok(" ", add_special_tokens=False)["input_ids"][:1] or [tok.pad_token_id]
    k = max(len(a), len(b))
    a, b = a + pad * (k - len(a)), b + pad * (k - len(b))
    hook = f"blocks.{layer}.{point}"
    _, cache = model.run_with_cache(torch.tensor([a, b]), [hook])
    diff = cache[hook][0] - cache[hook][1]  # [k, d_model]
    return ActAdd(diff.float().cpu(), layer, coeff, point)


def mean_difference(model: Any, positive: Sequence[str], negative: Sequence[str], layers: Sequence[int], *,
                    point: str = "hook_resid_pre", where: str | int = "last", method: str = "caa") -> SteeringVector:
    """Mean over pairs of ``act(positive) − act(negative)`` at ``where`` (default the last token), per layer."""
    from uncover.data.activations import collect, resid_hooks

    if len(positive) == 0 or len(positive) != len(negative):
        raise UncoverError(f"need equal, non-zero numbers of positive and negative texts, got "
                           f"{len(positive)} and {len(negative)}")
    hooks = resid_hooks(model, layers, point)
    p = collect(model, list(positive), hooks, where=where, progress=False)
    n = collect(model, list(negative), hooks, where=where, progress=False)
    vecs = {la: (p[h] - n[h]).mean(0) for la, h in zip(layers, hooks)}
    return SteeringVector(vecs, point, model.name, {"method": method, "pairs": len(positive)})


def caa(model: Any, positive: Sequence[str], negative: Sequence[str], layers: Sequence[int] | int, *,
        multiplier: float = 1.0, point: str = "hook_resid_pre") -> CAA:
    """CAA from contrast pairs: the mean difference at the last token of each pair, per layer.

    >>> pairs = sentiment_pairs()  # doctest: +SKIP
    >>> steer = caa(model, pairs.positive, pairs.negative, layers=[10], multiplier=4)  # doctest: +SKIP
    """
    layers = [layers] if isinstance(layers, int) else list(layers)
    return CAA(mean_difference(model, positive, negative, layers, point=point), multiplier)
