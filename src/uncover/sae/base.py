"""Sparse autoencoder base: parameters, encode/decode, the SAELens on-disk format.

An SAE (Bricken et al. 2023, "Towards Monosemanticity"; Cunningham et al. 2023) writes an
activation ``x`` ``[..., d_in]`` as a sparse non-negative code ``f = act(pre)`` with
``pre = (x - b_dec) @ W_enc + b_enc`` (``[..., d_sae]``) and reconstructs it as
``x_hat = f @ W_dec + b_dec``. Each architecture (one file each: ``relu.py``, ``topk.py``,
``jumprelu.py``) supplies the activation and its training loss.

Save/load use SAELens's format so SAEs move both ways: a directory with ``cfg.json`` and
``sae_weights.safetensors`` holding ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` (and ``threshold [d_sae]`` for JumpReLU).
``cfg.json`` is read and written by :mod:`uncover.sae.saelens`: every SAELens field is either
computed exactly as SAELens computes it or refused. The maps follow SAELens's
``process_sae_in``/``decode``: ``reshape_activations="hook_z"`` flattens ``[..., n_heads, d_head]``
inputs and reshapes reconstructions back; ``normalize_activations`` (``constant_norm_rescale``,
``layer_norm``) normalises the input in ``encode_pre`` and undoes it in ``decode`` with the
statistics of the last encoded input, as SAELens does.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from uncover.sae.saelens import NORMALIZATIONS, RESHAPES, SAEError, cfg_from_saelens, cfg_to_saelens

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"


__all__ = ["ARCHITECTURES", "CFG_FILE", "SAE", "SAEConfig", "SAEError", "WEIGHTS_FILE"]


@dataclass
class SAEConfig:
    """Shape and placement of an SAE.

    Attributes:
        d_in: width of the hooked activation.
        d_sae: number of latents (features).
        architecture: ``standard`` (ReLU + L1), ``topk`` or ``jumprelu``.
        hook_name: the hook the SAE reads, e.g. ``blocks.15.hook_resid_post``.
        k: active latents per token (``topk`` only).
        apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding.
        model_name: the model the SAE was trained on (informational).
        dtype: parameter dtype name.
        normalize_activations: SAELens's input normalisation: ``none``, ``constant_norm_rescale``
            (``x * sqrt(d_in) / ||x||``, undone on decode) or ``layer_norm`` (``(x - mean) / (std + 1e-5)``,
            undone on decode).
        reshape_activations: ``hook_z``: inputs ``[..., n_heads, d_head]`` are flattened to ``d_in`` and
            reconstructions reshaped back (SAELens's attention SAEs); ``none`` otherwise.
        rescale_acts_by_decoder_norm: TopK only: pre-activations are multiplied by the decoder row norms
            before the TopK and features divided by them before decoding (SAELens's ``TopKSAE``).
        extra: other SAELens keys, kept for round trips.
    """

    d_in: int
    d_sae: int
    architecture: str = "standard"
    hook_name: str = ""
    k: int | None = None
    apply_b_dec_to_input: bool = True
    model_name: str = ""
    dtype: str = "float32"
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    rescale_acts_by_decoder_norm: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SAEError(f"unknown SAE architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}")
        if self.d_in < 1 or self.d_sae < 1:
            raise SAEError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if self.architecture == "topk" and not (self.k and 0 < self.k <= self.d_sae):
            raise SAEError(f"a topk SAE needs 0 < k <= d_sae, got k={self.k}")
        if self.normalize_activations == "expected_average_only_in":
            raise SAEError("normalize_activations='expected_average_only_in' needs the dataset's norm scaling "
                           "factor, which cfg.json does not hold: load with SAE.load(path, norm_scaling_factor=...) "
                           "to fold it in (valid here: " + ", ".join(NORMALIZATIONS) + ")")
        if self.normalize_activations not in NORMALIZATIONS:
            raise SAEError(f"normalize_activations={self.normalize_activations!r} is not supported; valid: "
                           + ", ".join(NORMALIZATIONS))
        if self.reshape_activations not in RESHAPES:
            raise SAEError(f"reshape_activations={self.reshape_activations!r} is not supported; valid: "
                           + ", ".join(RESHAPES))
        if self.reshape_activations == "hook_z" and self.hook_name and not self.hook_name.endswith("_z"):
            raise SAEError(f"reshape_activations='hook_z' is for attn.hook_z SAEs, but hook_name is "
                           f"{self.hook_name!r}; valid: none")
        if self.rescale_acts_by_decoder_norm and self.architecture != "topk":
            raise SAEError("rescale_acts_by_decoder_norm is defined for topk SAEs only; valid: false")

    @property
    def hook_layer(self) -> int:
        """The block index in ``hook_name`` (0 when there is none)."""
        m = re.match(r"blocks\.(\d+)\.", self.hook_name)
        return int(m.group(1)) if m else 0

    def to_saelens(self) -> dict[str, Any]:
        """``cfg.json`` content in SAELens 6's layout (see :func:`uncover.sae.saelens.cfg_to_saelens`)."""
        return cfg_to_saelens(self)

    @staticmethod
    def from_saelens(d: dict[str, Any]) -> SAEConfig:
        """Parse a SAELens ``cfg.json``, any version (see :func:`uncover.sae.saelens.cfg_from_saelens`)."""
        return SAEConfig(**cfg_from_saelens(d))


ARCHITECTURES: dict[str, type[SAE]] = {}


class SAELensWeights:
    """Shared by SAEs and transcoders: the SAELens directory writer and the exact fold of a training scale.

    A class using it has ``W_enc``, ``W_dec``, ``b_dec``, ``state_keys`` and a ``cfg`` with ``to_saelens()``.
    """

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        """Make a model trained on inputs (and targets) multiplied by ``scale`` work on raw ones (exactly)."""
        self.W_enc.mul_(scale)  # type: ignore[attr-defined]
        self.W_dec.div_(scale)  # type: ignore[attr-defined]
        self.b_dec.div_(scale)  # type: ignore[attr-defined]

    def save(self, path: str | Path) -> Path:
        """Write ``cfg.json`` + ``sae_weights.safetensors`` (SAELens format) into directory ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights = {k: getattr(self, k).detach().contiguous().cpu() for k in self.state_keys}  # type: ignore[attr-defined]
        save_file(weights, path / WEIGHTS_FILE)
        (path / CFG_FILE).write_text(json.dumps(self.cfg.to_saelens(), indent=1), encoding="utf-8")  # type: ignore[attr-defined]
        return path


class SAE(SAELensWeights, nn.Module):
    """Base SAE: ``encode``, ``decode``, ``forward`` and save/load; subclasses set the activation.

    >>> from uncover.sae import TopKSAE
    >>> sae = TopKSAE(SAEConfig(d_in=8, d_sae=32, architecture="topk", k=4))
    >>> x = torch.randn(5, 8)
    >>> f = sae.encode(x)
    >>> bool(((f > 0).sum(-1) <= 4).all()), torch.allclose(sae(x), sae.decode(f))
    (True, True)
    """

    architecture: ClassVar[str] = ""
    state_keys: ClassVar[tuple[str, ...]] = ("W_enc", "b_enc", "W_dec", "b_dec")

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.architecture:
            ARCHITECTURES[cls.architecture] = cls

    def __init__(self, cfg: SAEConfig, seed: int = 0):
        super().__init__()
        if cfg.architecture != self.architecture:
            raise SAEError(f"{type(self).__name__} needs architecture {self.architecture!r}, got {cfg.architecture!r}")
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=g)
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True) * 0.1  # small decoder rows; encoder = transpose
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    # ---- the maps ------------------------------------------------------------------------
    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[..., d_sae]`` of inputs ``[..., d_in]`` (``[..., n_heads, d_head]`` for hook_z SAEs)."""
        x = self._normalize_in(self._reshape_in(x.to(self.W_enc.dtype)))
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    #: ``d_head`` of the last ``[..., n_heads, d_head]`` input of a hook_z SAE (SAELens keeps it the same way)
    d_head: int | None = None
    _norm_state: tuple[torch.Tensor, ...] | None = None

    def _reshape_in(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.reshape_activations != "hook_z" or x.shape[-1] == self.cfg.d_in:
            return x  # already flat (uncover's harvest gives flat rows)
        if x.dim() < 2 or x.shape[-2] * x.shape[-1] != self.cfg.d_in:
            raise SAEError(f"a hook_z SAE reads [..., n_heads, d_head] with n_heads * d_head = {self.cfg.d_in} "
                           f"(or flat [..., {self.cfg.d_in}]), got {tuple(x.shape)}")
        self.d_head = int(x.shape[-1])
        return x.flatten(-2)

    def _reshape_out(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.reshape_activations != "hook_z" or self.d_head is None:
            return x
        return x.unflatten(-1, (self.cfg.d_in // self.d_head, self.d_head))

    def _normalize_in(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = self.cfg.d_in ** 0.5 / x.norm(dim=-1, keepdim=True)
            self._norm_state = (coeff,)
            return x * coeff
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            self._norm_state = (mu, std)
            return x / (std + 1e-5)
        return x

    def _normalize_out(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.cfg.normalize_activations
        if mode == "none":
            return x
        if self._norm_state is None or self._norm_state[0].shape[:-1] != x.shape[:-1]:
            raise SAEError(f"normalize_activations={mode!r}: decode undoes the normalisation of the last encoded "
                           "input, so encode the same batch first (as in SAELens)")
        if mode == "constant_norm_rescale":
            return x / self._norm_state[0]
        mu, std = self._norm_state
        return x * std + mu

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """The sparse code from pre-activations (architecture-specific)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` (``hook_sae_acts_post``)."""
        return self.activation(self.encode_pre(x))

    def decode_linear(self, f: torch.Tensor) -> torch.Tensor:
        """``f @ W_dec + b_dec`` ``[..., d_in]``, before any normalisation is undone (``hook_sae_recons``)."""
        return f @ self.W_dec + self.b_dec

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` from features ``[..., d_sae]`` (``[..., n_heads, d_head]`` for hook_z)."""
        return self._reshape_out(self._normalize_out(self.decode_linear(f)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x``, in ``x``'s shape."""
        return self.decode(self.encode(x)).reshape(x.shape)

    # ---- training hooks (overridden per architecture) ------------------------------------
    def training_loss(self, x: torch.Tensor, sparsity_coeff: float, dead: torch.Tensor | None,
                      aux_coeff: float) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """``(loss, parts, features)`` on a batch ``[batch, d_in]``; ``dead`` marks dead latents."""
        raise NotImplementedError

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale decoder rows to unit norm, the encoder compensating (so ``f @ W_dec`` is unchanged)."""
        n = self.W_dec.norm(dim=-1).clamp(min=1e-8)
        self.W_dec.div_(n[:, None])
        self.W_enc.mul_(n[None, :])
        self.b_enc.mul_(n)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the gradient component along each decoder row (keeps rows on the unit sphere; Bricken et al.)."""
        if self.W_dec.grad is not None:
            w = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8)
            self.W_dec.grad.sub_((self.W_dec.grad * w).sum(-1, keepdim=True) * w)

    # ---- SAELens on-disk format (save: SAELensWeights) -----------------------------------
    @staticmethod
    def load(path: str | Path, norm_scaling_factor: float | None = None) -> SAE:
        """Read an SAE directory in SAELens format (ours or SAELens's ``save_model`` output).

        ``norm_scaling_factor``: for ``normalize_activations="expected_average_only_in"`` (SAELens's
        April-update scaling, whose factor lives outside ``cfg.json``), folded into the weights exactly as
        SAELens's ``fold_activation_norm_scaling_factor`` does.

        >>> from uncover.sae import TopKSAE
        >>> import tempfile
        >>> sae = TopKSAE(SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     back = SAE.load(sae.save(d))
        >>> type(back).__name__, torch.equal(back.W_dec, sae.W_dec)
        ('TopKSAE', True)
        """
        from uncover.core.userfiles import fields_from, load_tensors, read_json

        path = Path(path)
        if not (path / CFG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise SAEError(f"{path}: not an SAE directory (needs {CFG_FILE} and {WEIGHTS_FILE})")
        raw = read_json(path / CFG_FILE, "SAE config", obj=True)
        scaled = raw.get("normalize_activations") in ("expected_average_only_in", True)
        if norm_scaling_factor is not None and not scaled:
            raise SAEError("norm_scaling_factor is for SAEs with normalize_activations='expected_average_only_in'; "
                           f"{path} has {raw.get('normalize_activations', 'none')!r}")
        if scaled and norm_scaling_factor is not None:
            raw = {**raw, "normalize_activations": "none"}
        with fields_from(f"SAE config {path / CFG_FILE}"):
            cfg = SAEConfig.from_saelens(raw)
            sae = ARCHITECTURES[cfg.architecture](cfg)
        weights = load_tensors(path / WEIGHTS_FILE, "SAE weights")
        if "log_threshold" in weights and "threshold" not in weights:
            weights["threshold"] = weights.pop("log_threshold").exp()
        missing = [k for k in sae.state_keys if k not in weights]
        if missing:
            raise SAEError(f"{path / WEIGHTS_FILE}: missing {', '.join(missing)}; found {', '.join(weights)}")
        scale = weights.pop("scaling_factor", weights.pop("finetuning_scaling_factor", None))
        if scale is not None and not torch.equal(scale, torch.ones_like(scale)):
            # SAELens < 6 decoded (f * scaling_factor) @ W_dec: the same as scaling W_dec's rows
            if not cfg.extra.get("finetuning_scaling_factor"):
                raise SAEError(f"{path / WEIGHTS_FILE} holds a scaling_factor but cfg.json has "
                               "finetuning_scaling_factor false (as SAELens, refused)")
            if cfg.rescale_acts_by_decoder_norm:
                raise SAEError("finetuning_scaling_factor with rescale_acts_by_decoder_norm is not supported")
            weights["W_dec"] = weights["W_dec"] * scale.to(weights["W_dec"].dtype)[:, None]
        cfg.extra["finetuning_scaling_factor"] = False
        sae.load_weights(weights)
        if norm_scaling_factor is not None:
            sae.fold_scale(float(norm_scaling_factor))
        if cfg.dtype == "float64":  # half-precision SAEs compute in float32: rounding differences only
            sae = sae.double()
        return sae

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy SAELens-format tensors into the parameters (shapes checked)."""
        self._copy(weights, self.state_keys)

    def _copy(self, weights: dict[str, torch.Tensor], keys: tuple[str, ...]) -> None:
        for k in keys:
            p = getattr(self, k)
            if tuple(weights[k].shape) != tuple(p.shape):
                raise SAEError(f"{k} has shape {tuple(weights[k].shape)}, expected {tuple(p.shape)}")
            p.copy_(weights[k])

    def extra_repr(self) -> str:
        return json.dumps({k: v for k, v in asdict(self.cfg).items() if k != "extra"})
