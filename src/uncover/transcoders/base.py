"""Per-layer transcoders: a sparse, wider stand-in for one MLP (Dunefsky et al. 2024; Ge et al. 2024).

A transcoder reads the MLP's input ``x`` (``blocks.{l}.ln2.hook_normalized``, the normalised
residual) ``[..., d_in]`` and predicts the MLP's output ``y`` (``blocks.{l}.hook_mlp_out``)
``[..., d_out]`` through sparse features: ``f = act(x @ W_enc + b_enc)`` ``[..., d_sae]``,
``y_hat = f @ W_dec + b_dec (+ x @ W_skip.T)``; the optional linear skip connection is
SAELens's ``skip_transcoder`` (Paulo et al. 2025, "Transcoders beat sparse autoencoders").
``act`` is TopK (Gao et al. 2024; ``k`` features per token) or ReLU with an L1 penalty weighted
by the decoder norms.

Saved in SAELens's transcoder format: ``cfg.json`` (architecture ``transcoder`` or
``skip_transcoder``, ``d_in``, ``d_sae``, ``d_out``, ``hook_name``, ``hook_name_out``,
``hook_layer_out`` ...) and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``b_enc``,
``W_dec [d_sae, d_out]``, ``b_dec [d_out]``, ``W_skip [d_out, d_in]``).

Training goes through the SAE trainer (:mod:`uncover.transcoders.train`): a batch is ``[x, y]``
concatenated on the last axis (:meth:`Transcoder.split`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uncover.core.errors import UncoverError
from uncover.core.names import resid_name
from uncover.sae.base import SAELensWeights

WEIGHTS_FILE = "sae_weights.safetensors"
CFG_FILE = "cfg.json"
ACTIVATIONS = ("topk", "relu")


class TranscoderError(UncoverError):
    """A bad transcoder configuration or a directory that holds no transcoder."""


def mlp_in(layer: int) -> str:
    """The MLP input hook of ``layer`` (the normalised residual the MLP reads).

    >>> mlp_in(3)
    'blocks.3.ln2.hook_normalized'
    """
    return resid_name(layer, "ln2.hook_normalized")


def mlp_out(layer: int) -> str:
    """The MLP output hook of ``layer`` (what joins the residual stream).

    >>> mlp_out(3)
    'blocks.3.hook_mlp_out'
    """
    return resid_name(layer, "hook_mlp_out")


def _layer_of(hook: str) -> int:
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else 0


@dataclass
class TranscoderConfig:
    """Shape and placement of a per-layer transcoder.

    Attributes:
        d_in, d_out: widths of the input and output activations.
        d_sae: number of features.
        hook_name, hook_name_out: the hooks read and predicted.
        activation: ``topk`` or ``relu``.
        k: active features per token (``topk``).
        skip: with a linear skip connection ``W_skip [d_out, d_in]``.
        model_name: the model it was trained on (informational).
        extra: other SAELens keys, kept for round trips.
    """

    d_in: int
    d_sae: int
    d_out: int
    hook_name: str = ""
    hook_name_out: str = ""
    activation: str = "topk"
    k: int | None = 32
    skip: bool = False
    model_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise TranscoderError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if min(self.d_in, self.d_sae, self.d_out) < 1:
            raise TranscoderError(f"d_in, d_sae and d_out must be positive, got {self.d_in}, {self.d_sae}, "
                                  f"{self.d_out}")
        if self.activation == "topk" and not (self.k and 0 < self.k <= self.d_sae):
            raise TranscoderError(f"a topk transcoder needs 0 < k <= d_sae, got k={self.k}")

    @property
    def architecture(self) -> str:
        """SAELens's architecture name: ``skip_transcoder`` or ``transcoder``."""
        return "skip_transcoder" if self.skip else "transcoder"

    def to_saelens(self) -> dict[str, Any]:
        """``cfg.json`` content in SAELens's transcoder format."""
        d = dict(self.extra)
        d.update({
            "architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae, "d_out": self.d_out,
            "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
            "activation_fn_str": self.activation, "activation_fn_kwargs": {"k": self.k} if self.k else {},
            "hook_name": self.hook_name, "hook_layer": _layer_of(self.hook_name), "hook_head_index": None,
            "hook_name_out": self.hook_name_out, "hook_layer_out": _layer_of(self.hook_name_out),
            "hook_head_index_out": None, "model_name": self.model_name,
            "metadata": {"model_name": self.model_name, "hook_name": self.hook_name, "hook_head_index": None,
                         "prepend_bos": False, "sae_lens_training_version": None},
        })
        if self.k:
            d["k"] = self.k
        return d

    @staticmethod
    def from_saelens(d: dict[str, Any]) -> TranscoderConfig:
        """Parse a SAELens transcoder ``cfg.json``."""
        arch = d.get("architecture", "transcoder")
        if arch not in ("transcoder", "skip_transcoder"):
            raise TranscoderError(f"architecture {arch!r} is not a transcoder; valid: transcoder, skip_transcoder")
        meta = d.get("metadata") or {}
        act = d.get("activation_fn_str") or d.get("activation_fn") or "relu"
        k = d.get("k") or (d.get("activation_fn_kwargs") or {}).get("k")
        known = {"architecture", "d_in", "d_sae", "d_out", "hook_name", "hook_name_out", "activation_fn_str", "k",
                 "model_name"}
        return TranscoderConfig(
            d_in=int(d["d_in"]), d_sae=int(d["d_sae"]), d_out=int(d.get("d_out", d["d_in"])),
            hook_name=d.get("hook_name") or meta.get("hook_name", ""), hook_name_out=d.get("hook_name_out", ""),
            activation=act, k=int(k) if k else None, skip=arch == "skip_transcoder",
            model_name=d.get("model_name") or meta.get("model_name", "") or "",
            extra={key: v for key, v in d.items() if key not in known})


def topk_act(pre: torch.Tensor, k: int) -> torch.Tensor:
    """``ReLU`` of the ``k`` largest entries of ``pre`` ``[..., d]``, zeros elsewhere.

    >>> topk_act(torch.tensor([0.5, -1.0, 2.0, 1.0]), 2).tolist()
    [0.0, 0.0, 2.0, 1.0]
    """
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def aux_loss(pre: torch.Tensor, err: torch.Tensor, w_dec: torch.Tensor, dead: torch.Tensor | None,
             k_aux: int) -> torch.Tensor | None:
    """Gao et al.'s AuxK loss: the top dead pre-activations ``[batch, d_sae]`` reconstruct the error ``[batch, d]``.

    ``w_dec``: ``[d_sae, d]``. ``None`` when no feature is dead.
    """
    if dead is None or not bool(dead.any()):
        return None
    idx = dead.nonzero().flatten()
    dead_pre = pre[:, idx]
    f_aux = topk_act(dead_pre, min(len(idx), k_aux))
    e = err.detach()
    return (f_aux @ w_dec[idx] - e).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp(min=1e-12)


class Transcoder(SAELensWeights, nn.Module):
    """A per-layer transcoder (SAELens ``transcoder``/``skip_transcoder``).

    >>> tc = Transcoder(TranscoderConfig(d_in=8, d_sae=32, d_out=8, k=4, skip=True))
    >>> x = torch.randn(5, 8)
    >>> f = tc.encode(x)
    >>> bool(((f > 0).sum(-1) <= 4).all()), tuple(tc(x).shape)
    (True, (5, 8))
    """

    def __init__(self, cfg: TranscoderConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(cfg.d_sae, cfg.d_out, generator=g)
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True) * 0.1
        w_enc = w_dec.T.clone() if cfg.d_in == cfg.d_out else torch.randn(cfg.d_in, cfg.d_sae, generator=g) * 0.1 \
            / cfg.d_in ** 0.5
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(w_dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in))

    @property
    def state_keys(self) -> tuple[str, ...]:
        return ("W_enc", "b_enc", "W_dec", "b_dec") + (("W_skip",) if self.cfg.skip else ())

    # ---- the maps ------------------------------------------------------------------------
    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[..., d_sae]`` of inputs ``[..., d_in]``."""
        return x.to(self.W_enc.dtype) @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """Feature activations from pre-activations."""
        return topk_act(pre, self.cfg.k) if self.cfg.activation == "topk" else torch.relu(pre)  # type: ignore[arg-type]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]``."""
        return self.activation(self.encode_pre(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``f @ W_dec + b_dec`` ``[..., d_out]`` (without the skip connection)."""
        return f @ self.W_dec + self.b_dec

    def skip_out(self, x: torch.Tensor) -> torch.Tensor | None:
        """The skip connection's output ``x @ W_skip.T`` ``[..., d_out]``, or ``None``."""
        return x.to(self.W_enc.dtype) @ self.W_skip.T if self.cfg.skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted MLP output ``[..., d_out]`` for inputs ``[..., d_in]``."""
        y = self.decode(self.encode(x))
        s = self.skip_out(x)
        return y if s is None else y + s

    # ---- the trainer's protocol (uncover.sae.train) ------------------------------------------
    def split(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch ``[batch, d_in + d_out]`` as ``(x, y)``."""
        return xy[:, : self.cfg.d_in], xy[:, self.cfg.d_in :]

    def training_loss(self, xy: torch.Tensor, sparsity_coeff: float, dead: torch.Tensor | None,
                      aux_coeff: float) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """``(loss, parts, features)``: squared error of ``y``, plus L1 (``relu``) or AuxK (``topk``)."""
        x, y = self.split(xy)
        pre = self.encode_pre(x)
        f = self.activation(pre)
        y_hat = self.decode(f)
        s = self.skip_out(x)
        if s is not None:
            y_hat = y_hat + s
        err = y - y_hat
        mse = err.pow(2).sum(-1).mean()
        parts = {"mse": float(mse.detach())}
        loss = mse
        if self.cfg.activation == "relu":
            l1 = (f * self.W_dec.norm(dim=-1)).sum(-1).mean()
            loss = loss + sparsity_coeff * l1
            parts["sparsity"] = float(l1.detach())
        elif aux_coeff > 0:
            aux = aux_loss(pre, err, self.W_dec, dead, max(1, self.cfg.d_out // 2))
            if aux is not None:
                loss = loss + aux_coeff * aux
                parts["aux"] = float(aux.detach())
        return loss, parts, f

    # ---- SAELens on-disk format (fold_scale and save: uncover.sae.base.SAELensWeights) ------
    @staticmethod
    def load(path: str | Path) -> Transcoder:
        """Read a transcoder directory in SAELens format.

        >>> import tempfile
        >>> tc = Transcoder(TranscoderConfig(d_in=4, d_sae=8, d_out=4, k=2, skip=True))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     back = Transcoder.load(tc.save(d))
        >>> back.cfg.architecture, torch.equal(back.W_dec, tc.W_dec)
        ('skip_transcoder', True)
        """
        from uncover.core.userfiles import fields_from, load_tensors, read_json

        path = Path(path)
        if not (path / CFG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise TranscoderError(f"{path}: not a transcoder directory (needs {CFG_FILE} and {WEIGHTS_FILE})")
        with fields_from(f"transcoder config {path / CFG_FILE}"):
            cfg = TranscoderConfig.from_saelens(read_json(path / CFG_FILE, "transcoder config", obj=True))
            tc = Transcoder(cfg)
        w = load_tensors(path / WEIGHTS_FILE, "transcoder weights")
        missing = [k for k in tc.state_keys if k not in w]
        if missing:
            raise TranscoderError(f"{path / WEIGHTS_FILE}: missing {', '.join(missing)}; found {', '.join(w)}")
        with torch.no_grad():
            for k in tc.state_keys:
                p = getattr(tc, k)
                if tuple(w[k].shape) != tuple(p.shape):
                    raise TranscoderError(f"{k} has shape {tuple(w[k].shape)}, expected {tuple(p.shape)}")
                p.copy_(w[k])
        return tc

    def extra_repr(self) -> str:
        return json.dumps({k: v for k, v in asdict(self.cfg).items() if k != "extra"})
