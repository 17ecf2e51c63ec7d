"""Sparse autoencoder base: parameters, encode/decode, the SAELens on-disk format.

An SAE (Bricken et al. 2023, "Towards Monosemanticity"; Cunningham et al. 2023) writes an
activation ``x`` ``[..., d_in]`` as a sparse non-negative code ``f = act(pre)`` with
``pre = (x - b_dec) @ W_enc + b_enc`` (``[..., d_sae]``) and reconstructs it as
``x_hat = f @ W_dec + b_dec``. Each architecture (one file each: ``relu.py``, ``topk.py``,
``jumprelu.py``) supplies the activation and its training loss.

Save/load use SAELens's format so SAEs move both ways: a directory with ``cfg.json`` and
``sae_weights.safetensors`` holding ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` (and ``threshold [d_sae]`` for JumpReLU).
``cfg.json`` carries both the flat pre-v6 keys (``hook_name``, ``hook_layer``,
``activation_fn_str``, ...) and the v6 ``metadata`` block.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from uncover.core.errors import UncoverError

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"


class SAEError(UncoverError):
    """A bad SAE configuration or an SAE directory that cannot be read."""


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
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SAEError(f"unknown SAE architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}")
        if self.d_in < 1 or self.d_sae < 1:
            raise SAEError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if self.architecture == "topk" and not (self.k and 0 < self.k <= self.d_sae):
            raise SAEError(f"a topk SAE needs 0 < k <= d_sae, got k={self.k}")

    @property
    def hook_layer(self) -> int:
        """The block index in ``hook_name`` (0 when there is none)."""
        m = re.match(r"blocks\.(\d+)\.", self.hook_name)
        return int(m.group(1)) if m else 0

    def to_saelens(self) -> dict[str, Any]:
        """``cfg.json`` content in SAELens's format (flat keys and the v6 ``metadata`` block)."""
        act = {"standard": "relu", "topk": "topk", "jumprelu": "relu"}[self.architecture]
        d = dict(self.extra)
        d.update({
            "architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae, "dtype": self.dtype,
            "device": "cpu", "apply_b_dec_to_input": self.apply_b_dec_to_input, "normalize_activations": "none",
            "reshape_activations": "none", "activation_fn_str": act,
            "activation_fn_kwargs": {"k": self.k} if self.k is not None else {},
            "hook_name": self.hook_name, "hook_layer": self.hook_layer, "hook_head_index": None,
            "model_name": self.model_name, "prepend_bos": False, "finetuning_scaling_factor": False,
            "metadata": {"model_name": self.model_name, "hook_name": self.hook_name, "hook_head_index": None,
                         "prepend_bos": False, "sae_lens_training_version": None},
        })
        if self.k is not None:
            d["k"] = self.k
        return d

    @staticmethod
    def from_saelens(d: dict[str, Any]) -> SAEConfig:
        """Parse a SAELens ``cfg.json`` (pre-v6 flat keys or v6 with ``metadata``)."""
        meta = d.get("metadata") or {}
        arch = d.get("architecture", "standard")
        if arch == "standard" and d.get("activation_fn_str") == "topk":
            arch = "topk"
        if arch not in ARCHITECTURES:
            raise SAEError(f"SAE architecture {arch!r} is not supported; valid: {', '.join(ARCHITECTURES)}")
        if d.get("normalize_activations", "none") not in ("none", None):
            raise SAEError(f"normalize_activations={d['normalize_activations']!r} is not supported; valid: none "
                           "(fold the scale into the weights)")
        k = d.get("k") or (d.get("activation_fn_kwargs") or {}).get("k")
        known = {"architecture", "d_in", "d_sae", "dtype", "apply_b_dec_to_input", "hook_name", "model_name", "k"}
        return SAEConfig(
            d_in=int(d["d_in"]), d_sae=int(d["d_sae"]), architecture=arch,
            hook_name=d.get("hook_name") or meta.get("hook_name", ""), k=int(k) if k else None,
            apply_b_dec_to_input=bool(d.get("apply_b_dec_to_input", True)),
            model_name=d.get("model_name") or meta.get("model_name", "") or "", dtype=d.get("dtype", "float32"),
            extra={key: v for key, v in d.items() if key not in known},
        )


ARCHITECTURES: dict[str, type[SAE]] = {}


class SAE(nn.Module):
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
        """Pre-activations ``[..., d_sae]`` of inputs ``[..., d_in]``."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """The sparse code from pre-activations (architecture-specific)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` (``hook_sae_acts_post``)."""
        return self.activation(self.encode_pre(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` from features ``[..., d_sae]``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x``."""
        return self.decode(self.encode(x))

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

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        """Make an SAE trained on ``x * scale`` work on raw ``x`` (exactly)."""
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    # ---- SAELens on-disk format ----------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``cfg.json`` + ``sae_weights.safetensors`` (SAELens format) into directory ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: getattr(self, k).detach().contiguous().cpu() for k in self.state_keys}, path / WEIGHTS_FILE)
        (path / CFG_FILE).write_text(json.dumps(self.cfg.to_saelens(), indent=1), encoding="utf-8")
        return path

    @staticmethod
    def load(path: str | Path) -> SAE:
        """Read an SAE directory in SAELens format (ours or SAELens's ``save_model`` output).

        >>> from uncover.sae import TopKSAE
        >>> import tempfile
        >>> sae = TopKSAE(SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     back = SAE.load(sae.save(d))
        >>> type(back).__name__, torch.equal(back.W_dec, sae.W_dec)
        ('TopKSAE', True)
        """
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CFG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise SAEError(f"{path}: not an SAE directory (needs {CFG_FILE} and {WEIGHTS_FILE})")
        cfg = SAEConfig.from_saelens(json.loads((path / CFG_FILE).read_text(encoding="utf-8")))
        sae = ARCHITECTURES[cfg.architecture](cfg)
        weights = load_file(path / WEIGHTS_FILE)
        if "log_threshold" in weights and "threshold" not in weights:
            weights["threshold"] = weights.pop("log_threshold").exp()
        missing = [k for k in sae.state_keys if k not in weights]
        if missing:
            raise SAEError(f"{path / WEIGHTS_FILE}: missing {', '.join(missing)}; found {', '.join(weights)}")
        sae.load_weights(weights)
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
