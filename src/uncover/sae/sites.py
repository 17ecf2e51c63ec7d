"""Where an SAE can read, and where a trained one lives on disk.

An SAE encodes one activation vector per token. Hooks whose value is one vector per token
can feed one: the residual stream and what is added to it (``hook_embed``,
``blocks.{l}.hook_resid_pre|mid|post``, ``hook_attn_out``, ``hook_mlp_out``), normalised
inputs (``ln1/ln2/ln_final.hook_normalized``), MLP neurons (``mlp.hook_pre|hook_pre_linear|
hook_post``) and the concatenated head outputs ``attn.hook_z`` (attention SAEs, Kissane et
al. 2024). The others cannot: ``logits`` are the output distribution's scores, not a
representation (``d_vocab`` wide); ``hook_pattern`` and ``hook_attn_scores`` hold one value
per (query, key) pair, not a vector per token; ``hook_q|k|v|result`` are per-head copies
(``hook_result`` is ``n_heads`` vectors of ``d_model``), for which ``hook_z`` or
``hook_attn_out`` is the SAE-ready site.

A training run directory (``uncover sae train --out``) holds the SAE in ``sae/``; commands
that read an SAE accept either that run directory or an SAE directory itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from uncover.core.errors import UsageError
from uncover.core.names import HookName, act_name

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel
    from uncover.sae.base import SAE

_REFUSED = {
    "logits": "the output logits are scores over the vocabulary, not a representation",
    "hook_pattern": "attention patterns hold one value per (query, key) pair, not one vector per token",
    "hook_attn_scores": "attention scores hold one value per (query, key) pair, not one vector per token",
    "hook_q": "per-head queries; use attn.hook_z (concatenated head outputs) or hook_attn_out",
    "hook_k": "per-head keys; use attn.hook_z (concatenated head outputs) or hook_attn_out",
    "hook_v": "per-head values; use attn.hook_z (concatenated head outputs) or hook_attn_out",
    "hook_result": "n_heads copies of d_model per token; use attn.hook_z or hook_attn_out",
}


def sae_hook_problem(hook: str) -> str | None:
    """Why an SAE cannot read ``hook`` (``None`` when it can). Checks the name's kind only.

    >>> sae_hook_problem("blocks.3.hook_resid_post") is None, sae_hook_problem("blocks.3.attn.hook_z") is None
    (True, True)
    >>> sae_hook_problem("logits")
    'the output logits are scores over the vocabulary, not a representation'
    """
    return _REFUSED.get(HookName.parse(hook).leaf)


def check_sae_hook(hook: str, what: str = "hook") -> None:
    """Raise :class:`UsageError` when an SAE cannot read ``hook``, naming SAE-ready hooks.

    >>> check_sae_hook("blocks.2.attn.hook_pattern")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: hook blocks.2.attn.hook_pattern cannot feed an SAE: attention patterns hold one \
value per (query, key) pair, not one vector per token; use a residual hook (blocks.2.hook_resid_post), \
blocks.2.hook_attn_out, blocks.2.hook_mlp_out, blocks.2.mlp.hook_post or blocks.2.attn.hook_z
    """
    problem = sae_hook_problem(hook)
    if problem is not None:
        layer = HookName.parse(hook).layer or 0
        resid, *others, z = (act_name(k, layer) for k in ("resid_post", "attn_out", "mlp_out", "post", "z"))
        raise UsageError(f"{what} {hook} cannot feed an SAE: {problem}; use a residual hook ({resid}), "
                         f"{', '.join(others)} or {z}")


def sae_input_width(model: HookedModel, hook: str) -> int:
    """``d_in`` of an SAE at ``hook`` of ``model``: ``d_model``, ``d_mlp`` or ``n_heads * d_head``.

    >>> sae_input_width(model, "blocks.3.hook_resid_post"), sae_input_width(model, "blocks.3.mlp.hook_post")
    (576, 1536)
    """
    check_sae_hook(hook)
    c = model.cfg
    point = HookName.parse(hook).point
    if point.startswith("mlp."):
        return c.d_mlp
    if point == "attn.hook_z":
        return c.n_heads * c.d_head
    return c.d_model


def sae_dir(path: str | Path, what: str = "SAE path") -> Path:
    """The SAE directory of ``path``: ``path/sae`` for a training run directory, else ``path``.

    Raises :class:`UsageError` when neither holds an SAE (``cfg.json`` and ``sae_weights.safetensors``).

    >>> sae_dir("/no/such/run")
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: SAE path /no/such/run is neither an SAE directory (cfg.json and \
sae_weights.safetensors, SAELens format) nor a training run directory with sae/ in it
    """
    from uncover.sae.base import CFG_FILE, WEIGHTS_FILE

    p = Path(path)
    for d in (p / "sae", p):
        if (d / CFG_FILE).is_file() and (d / WEIGHTS_FILE).is_file():
            return d
    raise UsageError(f"{what} {p} is neither an SAE directory ({CFG_FILE} and {WEIGHTS_FILE}, SAELens format) nor a "
                     "training run directory with sae/ in it")


def load_sae_dir(path: str | Path) -> SAE:
    """Load the SAE of a training run directory or of an SAE directory (see :func:`sae_dir`).

    >>> load_sae_dir(sae.save(tmp / "sae-run")).cfg.hook_name
    'blocks.15.hook_resid_post'
    """
    from uncover.sae.base import SAE

    return SAE.load(sae_dir(path))
