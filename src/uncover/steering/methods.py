"""Steering methods as scoped interventions: ActAdd, CAA, RepE control, ITI, directional ablation.

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

Every method is a value that builds intervention values (:meth:`Steering.interventions`:
:class:`~uncover.hooks.interventions.Add` and :class:`~uncover.hooks.interventions.Ablate` at
chosen positions), plus hook functions only where no intervention expresses the change
(:meth:`Steering.hooks`: RepE's piecewise operator, a partial directional ablation);
:func:`steering` applies them for a ``with`` block (removed in ``finally``, so the model is
never left modified, even on error), and :func:`generate` runs steered generation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import act_name, resid_name
from uncover.hooks.engine import HookPoint
from uncover.hooks.interventions import Ablate, Add, Intervention
from uncover.steering.vectors import SteeringVector

OPERATORS = ("linear", "piecewise", "projection")


@dataclass
class Steering:
    """Base class: the changes of a steered forward pass, as interventions (and hooks where none fits)."""

    def interventions(self, model: Any, generating: bool = False) -> list[Intervention]:
        """The intervention values; ``generating``: for :func:`generate` (each forward pass after the first
        feeds one new token, which is then each prompt's last)."""
        return []

    def hooks(self, model: Any, generating: bool = False) -> list[tuple[str, Any]]:
        """``[(hook name, fn), ...]`` for the changes that no intervention expresses."""
        return []

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

    >>> ActAdd(torch.ones(2, 576), layer=3, coeff=2.0).interventions(model)[1].positions
    (1,)
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

    def interventions(self, model: Any, generating: bool = False) -> list[Intervention]:
        _layer_ok(model, self.layer)
        hook = resid_name(self.layer, self.point)
        return [Add(hook, vector=self.coeff * d, positions=[j]) for j, d in enumerate(self.diff)]


@dataclass
class CAA(Steering):
    """Add ``multiplier × vector[l]`` at every position from each prompt's last token on.

    In a plain forward over text (not generating) every position is steered.

    >>> CAA(SteeringVector({3: torch.ones(576)}), 2.0).interventions(model, generating=True)[0].positions
    (-1,)
    """

    vector: SteeringVector
    multiplier: float = 1.0

    def scaled(self, s: float) -> CAA:
        return replace(self, multiplier=self.multiplier * s)

    def interventions(self, model: Any, generating: bool = False) -> list[Intervention]:
        self.vector.check(model)
        # generating: the prompt's last token on the first forward pass, then each new token (the last one)
        positions = (-1,) if generating else None
        return [Add(self.vector.hook(layer), vector=vec * self.multiplier, positions=positions)
                for layer, vec in self.vector.vectors.items()]


@dataclass
class Control(Steering):
    """RepE control: ``operator`` with strength ``alpha`` at each layer of ``vector`` (every position).

    >>> [type(iv).__name__ for iv in Control(SteeringVector({3: torch.ones(576)}), "projection").interventions(model)]
    ['Ablate']
    """

    vector: SteeringVector
    operator: str = "linear"
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise UncoverError(f"unknown operator {self.operator!r}; valid: {', '.join(OPERATORS)}")

    def scaled(self, s: float) -> Control:
        return replace(self, alpha=self.alpha * s)

    def interventions(self, model: Any, generating: bool = False) -> list[Intervention]:
        self.vector.check(model)
        if self.operator == "linear":  # h + αv
            return [Add(self.vector.hook(la), vector=vec, scale=self.alpha) for la, vec in self.vector.vectors.items()]
        if self.operator == "projection":  # h − (h·v̂)v̂
            return [Ablate(self.vector.hook(la), direction=vec) for la, vec in self.vector.vectors.items()]
        return []

    def hooks(self, model: Any, generating: bool = False) -> list[tuple[str, Any]]:
        if self.operator != "piecewise":
            return []
        self.vector.check(model)
        return [(self.vector.hook(la), _piecewise(vec, self.alpha)) for la, vec in self.vector.vectors.items()]


def _piecewise(vec: torch.Tensor, alpha: float) -> Any:
    # A hand-written hook: h + α·sign(h·v̂)·v adds a vector whose sign depends on the value itself,
    # which no intervention (Add adds a fixed vector) expresses.
    def fn(v: torch.Tensor, hp: HookPoint) -> torch.Tensor:
        r = vec.to(v)
        u = r / r.norm()
        return v + alpha * torch.sign(v @ u).unsqueeze(-1) * r

    return fn


@dataclass
class DirectionalAblation(Steering):
    """Project ``direction`` (``[d_model]``) out of the embeddings and every attention and MLP output.

    ``strength`` 1 removes the component (:class:`~uncover.hooks.interventions.Ablate` on each of
    these hooks); other values remove that fraction (for sweeps).

    >>> len(DirectionalAblation(torch.ones(576)).interventions(model)) == 1 + 2 * model.cfg.n_layers
    True
    """

    direction: torch.Tensor
    strength: float = 1.0

    def __post_init__(self) -> None:
        if self.direction.dim() != 1:
            raise UncoverError(f"direction must be [d_model], got {tuple(self.direction.shape)}")
        _check_vec(self.direction, "ablation direction")

    def scaled(self, s: float) -> DirectionalAblation:
        return replace(self, strength=self.strength * s)

    def _names(self, model: Any) -> list[str]:
        if self.direction.shape[0] != model.cfg.d_model:
            raise UncoverError(f"direction size {self.direction.shape[0]} does not match d_model {model.cfg.d_model}")
        names = [n for n in (act_name("embed"), act_name("pos_embed")) if n in model.hook_names()]
        for la in range(model.cfg.n_layers):
            names += [act_name("attn_out", la), act_name("mlp_out", la)]
        return names

    def interventions(self, model: Any, generating: bool = False) -> list[Intervention]:
        names = self._names(model)
        return [Ablate(n, direction=self.direction) for n in names] if self.strength == 1 else []

    def hooks(self, model: Any, generating: bool = False) -> list[tuple[str, Any]]:
        names = self._names(model)
        if self.strength == 1:
            return []
        # A hand-written hook: removing a fraction of the component (h − s·(h·û)û, s ≠ 1) is no
        # intervention (Ablate removes all of it).
        u = self.direction.float() / self.direction.float().norm()
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
def steering(model: Any, steer: Steering | None, generating: bool = False) -> Iterator[Any]:
    """Apply ``steer`` (its interventions and hooks) for the block; the model is restored on exit, even on error.

    ``generating``: the block generates text (see :meth:`Steering.interventions`).

    >>> with steering(model, CAA(SteeringVector({10: torch.ones(576)}), multiplier=4)):
    ...     logits = model("I think that")
    """
    if steer is None:
        yield model
        return
    with model.intervene(steer.interventions(model, generating)), model.hooks(steer.hooks(model, generating)):
        yield model


def generate(model: Any, prompts: str | Sequence[str], steer: Steering | None, max_new_tokens: int = 20,
             **kwargs: Any) -> list[str]:
    """Greedy continuations of ``prompts`` under ``steer`` (``None``: unsteered), one string per prompt.

    >>> len(generate(model, ["I think that"], actadd(model, "Love", "Hate", layer=6, coeff=5), max_new_tokens=4))
    1
    """
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not texts:
        raise UncoverError("no prompts given")
    with steering(model, steer, generating=True):
        out = model.generate(texts, max_new_tokens=max_new_tokens, **kwargs)
    return list(out)


# ---- building steering values from prompts and data ------------------------------------------
def actadd(model: Any, positive: str, negative: str, *, layer: int, coeff: float = 5.0,
           point: str = "hook_resid_pre") -> ActAdd:
    """ActAdd from one prompt pair: the shorter prompt is right-padded with space tokens, as in the paper.

    >>> steer = actadd(model, "Love", "Hate", layer=6, coeff=5)
    """
    _layer_ok(model, layer)
    for what, text in (("positive", positive), ("negative", negative)):
        if not isinstance(text, str) or not text.strip():
            raise UncoverError(f"ActAdd's {what} prompt must be non-empty text, got {text!r}")
    if isinstance(coeff, bool) or not isinstance(coeff, int | float) or not math.isfinite(coeff):
        raise UncoverError(f"coeff must be a finite number, got {coeff!r}")
    tok = model.tokenizer
    a = tok(positive)["input_ids"]
    b = tok(negative)["input_ids"]
    pad = tok(" ", add_special_tokens=False)["input_ids"][:1] or [tok.pad_token_id]
    k = max(len(a), len(b))
    a, b = a + pad * (k - len(a)), b + pad * (k - len(b))
    hook = resid_name(layer, point)
    _, cache = model.run_with_cache(torch.tensor([a, b]), [hook])
    diff = cache[hook][0] - cache[hook][1]  # [k, d_model]
    return ActAdd(diff.float().cpu(), layer, coeff, point)


def mean_difference(model: Any, positive: Sequence[str], negative: Sequence[str], layers: Sequence[int], *,
                    point: str = "hook_resid_pre", where: str | int = "last", method: str = "caa") -> SteeringVector:
    """Mean over pairs of ``act(positive) − act(negative)`` at ``where`` (default the last token), per layer.

    >>> mean_difference(model, ["I love it"], ["I hate it"], [3]).vectors[3].shape
    torch.Size([576])
    """
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

    >>> from uncover.data.labelled import sentiment_pairs
    >>> pairs = sentiment_pairs(8)
    >>> steer = caa(model, pairs.positive, pairs.negative, layers=[10], multiplier=4)
    >>> steer.vector.vectors[10].shape
    torch.Size([576])
    """
    layers = [layers] if isinstance(layers, int) else list(layers)
    return CAA(mean_difference(model, positive, negative, layers, point=point), multiplier)
