"""Attaching an SAE to the hooked model: read features, splice the reconstruction, steer, ablate.

Inside ``with attach_sae(model, sae, ...) as att:`` every forward pass encodes the value
at ``sae.cfg.hook_name`` and records TransformerLens/SAELens-named values in
``att.cache`` (``hook_sae_input``, ``hook_sae_acts_pre``, ``hook_sae_acts_post``,
``hook_sae_recons``, ``hook_sae_error``). With ``use_error_term=True`` (the default) the
model's value is ``decode(f') + (x - decode(f))``: unchanged when no feature is edited, and
changed by exactly ``sum_i (f'_i - f_i) W_dec[i]`` when features are ablated (``ablate``),
clamped (``clamp``) or steered (``steer``: added to the activation; Templeton et al. 2024).
With ``use_error_term=False`` the reconstruction replaces the value (CE-loss-recovered
evaluation). The model is restored when the block exits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel
    from uncover.sae.base import SAE

SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error")


@dataclass
class SAEAttachment:
    """Values recorded at the SAE during the last forward pass (``[batch, pos, ...]``), keyed by SAE hook name."""

    sae: SAE
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.cache:
            valid = ", ".join(self.cache) or ", ".join(SAE_HOOKS)
            raise UncoverError(f"no SAE value {name!r} recorded; valid: {valid}")
        return self.cache[name]


def _check(sae: SAE, ids: Sequence[int], what: str) -> None:
    bad = [i for i in ids if not 0 <= i < sae.cfg.d_sae]
    if bad:
        raise UncoverError(f"{what} feature(s) {bad} out of range; valid: 0..{sae.cfg.d_sae - 1}")


@contextlib.contextmanager
def attach_sae(model: HookedModel, sae: SAE, *, ablate: Sequence[int] = (), clamp: dict[int, float] | None = None,
               steer: dict[int, float] | None = None, use_error_term: bool = True, skip_first: int = 0,
               record: bool = True) -> Iterator[SAEAttachment]:
    """Attach ``sae`` at its hook for the block (see the module docstring).

    ``skip_first``: leave the first positions untouched (as in training with ``skip_first``).

    >>> with attach_sae(model, sae, steer={123: 8.0}) as att:
    ...     logits = model("I think that")  # or model.generate(...): then the last step's values
    >>> att["hook_sae_acts_post"].shape  # [batch, pos, d_sae]
    torch.Size([1, 3, 2304])
    """
    hook = sae.cfg.hook_name
    if not hook:
        raise UncoverError("this SAE has no hook_name; set sae.cfg.hook_name to the hook it reads")
    model.site(hook)
    clamp, steer = dict(clamp or {}), dict(steer or {})
    _check(sae, list(ablate) + list(clamp) + list(steer), "")
    att = SAEAttachment(sae)
    edits = bool(ablate or clamp or steer)

    def fn(v: torch.Tensor, hp: Any) -> torch.Tensor | None:
        x = v[:, skip_first:]
        with torch.no_grad():
            pre = sae.encode_pre(x)
            f = sae.activation(pre)
            recon = sae.decode(f)
            f2 = f
            if edits:
                f2 = f.clone()
                if ablate:
                    f2[..., list(ablate)] = 0.0
                for i, val in clamp.items():
                    f2[..., i] = val
                for i, val in steer.items():
                    f2[..., i] += val
            out = sae.decode(f2) if edits else recon
            if use_error_term:
                out = out + (x.to(recon.dtype) - recon)
        if record:
            att.cache.update({"hook_sae_input": x.detach(), "hook_sae_acts_pre": pre, "hook_sae_acts_post": f2,
                              "hook_sae_recons": recon, "hook_sae_error": x.to(recon.dtype) - recon})
        if use_error_term and not edits:
            return None  # the value is exactly unchanged
        v = v.clone()
        v[:, skip_first:] = out.to(v.dtype)
        return v

    with model.hooks([(hook, fn)]):
        yield att
