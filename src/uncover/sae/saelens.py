"""SAELens ``cfg.json``: every field read exactly as SAELens reads it, or refused; written in SAELens 6's layout.

SAELens (``sae_lens/saes/*.py``, ``loading/pretrained_sae_loaders.py``) reads a ``cfg.json`` through one of two
paths: with ``metadata.sae_lens_version`` (or a top-level ``sae_lens_version``) >= 6 the dataclass fields are
read as they are and the model-side keys come from ``metadata``; otherwise ``handle_pre_6_0_config`` renames
old keys (``hook_point`` -> ``hook_name``, ``activation_fn_str`` -> ``activation_fn``) and fills defaults
(``reshape_activations`` becomes ``hook_z`` for a ``hook_z`` hook). :func:`cfg_from_saelens` follows both
paths. Each key is one of:

- a field that changes what the SAE computes, implemented exactly (``apply_b_dec_to_input``,
  ``normalize_activations`` ``none | constant_norm_rescale | layer_norm``, ``reshape_activations``
  ``none | hook_z``, TopK's ``k`` and ``rescale_acts_by_decoder_norm``, ``finetuning_scaling_factor`` of
  SAELens < 6, folded into ``W_dec``), or refused with the valid choices (``expected_average_only_in`` without
  its scaling factor, a non-null ``hook_head_index``, other architectures);
- a description of the training data or placement, kept for round trips (:data:`KEPT`);
- a training hyper-parameter without effect on encode/decode (:data:`TRAINING_ONLY`), kept;
- anything else: refused, so that a field from a newer SAELens is never ignored silently.

:func:`cfg_to_saelens` writes SAELens 6's layout (fields flat, model-side keys in ``metadata`` with
``sae_lens_version``, so SAELens takes its current path) plus the pre-6 flat keys older readers need.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from uncover.core.errors import UsageError

if TYPE_CHECKING:
    from uncover.sae.base import SAEConfig


class SAEError(UsageError):
    """A bad SAE configuration or an SAE directory that cannot be read."""

#: the SAELens release whose cfg.json layout :func:`cfg_to_saelens` follows (any version >= 6 takes the v6 path)
SAELENS_LAYOUT_VERSION = "6.18.0"

NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")
RESHAPES = ("none", "hook_z")
DTYPES = ("float32", "float64", "float16", "bfloat16")
#: the SAELens architectures uncover computes (other SAE-like classes, e.g. crosscoders, have their own files)
SAELENS_ARCHITECTURES = ("jumprelu", "standard", "topk")

#: keys that describe where the SAE reads and what it was trained on; they do not change encode/decode
KEPT = frozenset({
    "device", "model_name", "hook_name", "hook_layer", "model_class_name", "model_from_pretrained_kwargs",
    "prepend_bos", "exclude_special_tokens", "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path",
    "dataset_trust_remote_code", "sae_lens_version", "sae_lens_training_version", "activation_fn_str",
    "activation_fn", "activation_fn_kwargs", "finetuning_scaling_factor", "metadata", "hook_head_index",
    "saved_by",
})
#: training hyper-parameters (SAELens's TrainingSAEConfig subclasses and pre-6 runner configs): no effect on
#: what a trained SAE computes
TRAINING_ONLY = frozenset({
    "decoder_init_norm", "lp_norm", "l1_coefficient", "l1_warm_up_steps", "aux_loss_coefficient",
    "use_sparse_activations", "jumprelu_init_threshold", "jumprelu_bandwidth", "jumprelu_sparsity_loss_mode",
    "pre_act_loss_coefficient", "jumprelu_tanh_scale", "topk_threshold_lr", "use_ghost_grads",
    "normalize_sae_decoder", "noise_scale", "decoder_orthogonal_init", "mse_loss_normalization",
    "decoder_heuristic_init", "decoder_heuristic_init_norm", "init_encoder_as_decoder_transpose",
    "scale_sparsity_penalty_by_decoder_norm",
})
#: fields that change encode/decode, each implemented (see the module docstring)
COMPUTED = frozenset({
    "architecture", "d_in", "d_sae", "dtype", "apply_b_dec_to_input", "normalize_activations",
    "reshape_activations", "k", "rescale_acts_by_decoder_norm",
})
_RENAMED = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index", "hook_point_layer": "hook_layer"}


def _error(msg: str) -> Exception:
    return SAEError(msg)


def _version_at_least_6(v: Any) -> bool:
    m = re.match(r"\s*(\d+)", str(v or ""))
    return bool(m) and int(m.group(1)) >= 6


def cfg_from_saelens(d: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~uncover.sae.base.SAEConfig` fields of a SAELens ``cfg.json`` (any version), or a refusal.

    >>> cfg = cfg_from_saelens({"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 2,
    ...                          "rescale_acts_by_decoder_norm": True,
    ...                          "metadata": {"sae_lens_version": "6.5.0", "hook_name": "blocks.1.hook_resid_post"}})
    >>> cfg["architecture"], cfg["k"], cfg["rescale_acts_by_decoder_norm"], cfg["hook_name"]
    ('topk', 2, True, 'blocks.1.hook_resid_post')
    >>> cfg_from_saelens({"architecture": "standard", "d_in": 4, "d_sae": 8, "l2_penalty": 1.0})
    Traceback (most recent call last):
    ...
    uncover.sae.saelens.SAEError: cfg.json has field(s) l2_penalty that uncover does not know; it refuses them rather \
than ignore what they may change (known: see uncover.sae.saelens)
    """
    meta = dict(d.get("metadata") or {})
    v6 = _version_at_least_6(d.get("sae_lens_version") or meta.get("sae_lens_version"))
    d = {_RENAMED.get(k, k): v for k, v in d.items()}
    unknown = sorted(k for k in d if k not in KEPT | TRAINING_ONLY | COMPUTED)
    if unknown:
        raise _error(f"cfg.json has field(s) {', '.join(unknown)} that uncover does not know; it refuses them rather "
                     "than ignore what they may change (known: see uncover.sae.saelens)")
    for key in ("d_in", "d_sae"):
        if key not in d:
            raise _error(f"cfg.json lacks {key!r}; an SAE config needs d_in and d_sae")

    def get(key: str, default: Any = None) -> Any:  # v6 reads model-side keys from metadata only
        if v6 and key in ("hook_name", "model_name", "hook_head_index"):
            return meta.get(key, default)
        return d.get(key, meta.get(key, default))

    act = d.get("activation_fn", d.get("activation_fn_str"))
    arch = d.get("architecture", "standard")
    kwargs = d.get("activation_fn_kwargs") or {}
    if not v6 and act == "topk" and kwargs.get("k") is not None:
        arch = "topk"
    if arch not in SAELENS_ARCHITECTURES:
        raise _error(f"SAE architecture {arch!r} is not supported; valid: {', '.join(SAELENS_ARCHITECTURES)}")
    if arch != "topk" and act not in (None, "relu"):
        raise _error(f"activation_fn {act!r} with architecture {arch!r} is not supported; valid: relu")
    hook = get("hook_name", "") or ""
    if get("hook_head_index") is not None:
        raise _error(f"hook_head_index={get('hook_head_index')!r}: an SAE on one head of {hook or 'hook_z'} is not "
                     "supported; valid: null (an SAE on all heads, reshape_activations='hook_z')")
    norm = d.get("normalize_activations", "none")
    if isinstance(norm, bool):  # SAELens < 6 wrote a bool: True meant the April-update scaling
        norm = "expected_average_only_in" if norm else "none"
    norm = norm or "none"
    reshape = d.get("reshape_activations")
    if reshape is None:
        reshape = "hook_z" if not v6 and "hook_z" in hook else "none"
    k = d.get("k") if arch == "topk" else None
    if arch == "topk" and k is None:
        k = kwargs.get("k", 100)  # SAELens's TopKSAEConfig default
    rescale = d.get("rescale_acts_by_decoder_norm", False)
    if rescale and arch != "topk":
        raise _error(f"rescale_acts_by_decoder_norm=true is defined for topk SAEs only, not {arch!r}; valid: false")
    dtype = d.get("dtype", "float32")
    dtype = dtype.removeprefix("torch.") if isinstance(dtype, str) else dtype
    if dtype not in DTYPES:
        raise _error(f"dtype {dtype!r} is not supported; valid: {', '.join(DTYPES)}")
    extra = {key: v for key, v in d.items() if key not in COMPUTED and key not in ("hook_name", "model_name")}
    if meta:
        extra["metadata"] = meta
    return dict(
        d_in=int(d["d_in"]), d_sae=int(d["d_sae"]), architecture=arch, hook_name=hook,
        k=int(k) if k is not None else None, apply_b_dec_to_input=bool(d.get("apply_b_dec_to_input", True)),
        model_name=get("model_name", "") or "", dtype=dtype, normalize_activations=norm,
        reshape_activations=reshape, rescale_acts_by_decoder_norm=bool(rescale), extra=extra,
    )


def cfg_to_saelens(cfg: SAEConfig) -> dict[str, Any]:
    """``cfg.json`` content: SAELens 6's layout (``metadata`` with ``sae_lens_version``) and the pre-6 flat keys.

    >>> from uncover.sae import SAEConfig
    >>> d = cfg_to_saelens(SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2, hook_name="blocks.0.attn.hook_z",
    ...                              reshape_activations="hook_z"))
    >>> d["metadata"]["sae_lens_version"], d["reshape_activations"], d["metadata"]["hook_name"]
    ('6.18.0', 'hook_z', 'blocks.0.attn.hook_z')
    """
    from uncover.core.version import __version__ as ours

    act = "topk" if cfg.architecture == "topk" else "relu"
    meta = dict(cfg.extra.get("metadata") or {})
    for key in ("prepend_bos", "context_size", "dataset_path", "model_class_name", "neuronpedia_id",
                "exclude_special_tokens", "seqpos_slice", "model_from_pretrained_kwargs"):
        if key in cfg.extra:
            meta.setdefault(key, cfg.extra[key])
    meta.update({"model_name": cfg.model_name, "hook_name": cfg.hook_name, "hook_head_index": None,
                 "sae_lens_version": SAELENS_LAYOUT_VERSION, "saved_by": f"uncover {ours}"})
    meta.setdefault("prepend_bos", False)
    meta.setdefault("sae_lens_training_version", None)
    d = {k: v for k, v in cfg.extra.items() if k in TRAINING_ONLY or k in KEPT}
    d.update({
        "architecture": cfg.architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": cfg.dtype, "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input, "normalize_activations": cfg.normalize_activations,
        "reshape_activations": cfg.reshape_activations,
        # pre-6 flat keys (SAELens < 6 and other readers)
        "activation_fn_str": act, "activation_fn_kwargs": {"k": cfg.k} if cfg.k is not None else {},
        "hook_name": cfg.hook_name, "hook_layer": cfg.hook_layer, "hook_head_index": None,
        "model_name": cfg.model_name, "prepend_bos": meta["prepend_bos"], "finetuning_scaling_factor": False,
        "metadata": meta,
    })
    d.pop("activation_fn", None)
    d.pop("sae_lens_version", None)
    if cfg.architecture == "topk":
        d["k"] = cfg.k
        d["rescale_acts_by_decoder_norm"] = cfg.rescale_acts_by_decoder_norm
    return d
