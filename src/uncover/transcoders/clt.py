"""Cross-layer transcoders (Ameisen et al. 2025, "Circuit Tracing"; Lindsey et al. 2024).

A CLT has one set of ``d_layer`` features per covered layer. The features of layer ``l`` read
that layer's MLP input ``x_l`` ``[..., d_in]`` and write to the MLP outputs of every covered
layer ``l' >= l``: ``y_hat_{l'} = sum_{l <= l'} f_l @ W_dec[l][:, l' - l] + b_dec[l']``
(``+ x_{l'} @ W_skip[l'].T`` with skip connections). So a feature that many MLPs compute in
turn is one feature, not one per layer.

SAELens defines no CLT format; a CLT is saved as ``cfg.json`` (``architecture: "clt"``,
``layers``, ``d_in``, ``d_layer``, ``d_out``, ``activation``, ``k``, ``skip``) and
``clt_weights.safetensors`` with ``W_enc [n, d_in, d_layer]``, ``b_enc [n, d_layer]``,
``W_dec_{i} [d_layer, n - i, d_out]`` for source ``i`` of the ``n`` covered layers,
``b_dec [n, d_out]`` and ``W_skip [n, d_out, d_in]``.

Training batches (:func:`uncover.transcoders.data.harvest_pairs`) hold every covered layer's
``x`` then every layer's ``y``; TopK keeps ``k`` features per layer and token; there is no
AuxK loss for CLTs (dead features stay dead: train wider or with ``relu``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uncover.transcoders.base import ACTIVATIONS, CFG_FILE, TranscoderError, mlp_in, mlp_out, topk_act

CLT_FILE = "clt_weights.safetensors"


@dataclass
class CLTConfig:
    """Shape of a cross-layer transcoder.

    Attributes:
        layers: the covered layers, ascending.
        d_in, d_out: widths of each layer's MLP input and output.
        d_layer: features per layer.
        activation: ``topk`` (``k`` per layer and token) or ``relu``.
        k: active features per layer and token (``topk``).
        skip: with a linear skip connection per layer.
        model_name: the model it was trained on.
        extra: other keys, kept for round trips.
    """

    layers: list[int]
    d_in: int
    d_layer: int
    d_out: int
    activation: str = "topk"
    k: int | None = 16
    skip: bool = False
    model_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = [int(x) for x in self.layers]
        if not self.layers or self.layers != sorted(set(self.layers)):
            raise TranscoderError(f"a CLT needs distinct ascending layers, got {self.layers}")
        if self.activation not in ACTIVATIONS:
            raise TranscoderError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if self.activation == "topk" and not (self.k and 0 < self.k <= self.d_layer):
            raise TranscoderError(f"a topk CLT needs 0 < k <= d_layer, got k={self.k}")

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_sae(self) -> int:
        """All features, every layer's together (what the SAE trainer counts)."""
        return self.n_layers * self.d_layer

    @property
    def architecture(self) -> str:
        return "clt"

    def to_saelens(self) -> dict[str, Any]:
        """``cfg.json`` content (an uncover format: SAELens has none for CLTs)."""
        d = dict(self.extra)
        d.update({"architecture": "clt", "layers": self.layers, "d_in": self.d_in, "d_layer": self.d_layer,
                  "d_out": self.d_out, "activation": self.activation, "k": self.k, "skip": self.skip,
                  "model_name": self.model_name,
                  "hook_names": [mlp_in(la) for la in self.layers],
                  "hook_names_out": [mlp_out(la) for la in self.layers]})
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> CLTConfig:
        known = {"architecture", "layers", "d_in", "d_layer", "d_out", "activation", "k", "skip", "model_name"}
        return CLTConfig(layers=list(d["layers"]), d_in=int(d["d_in"]), d_layer=int(d["d_layer"]),
                         d_out=int(d["d_out"]), activation=d.get("activation", "topk"), k=d.get("k"),
                         skip=bool(d.get("skip", False)), model_name=d.get("model_name", ""),
                         extra={k: v for k, v in d.items() if k not in known})


class CrossLayerTranscoder(nn.Module):
    """Features of each layer write to the MLP outputs of that layer and all later covered ones.

    >>> clt = CrossLayerTranscoder(CLTConfig(layers=[0, 1, 2], d_in=8, d_layer=16, d_out=8, k=2))
    >>> ys = clt.reconstruct(torch.randn(5, 3, 8))
    >>> tuple(ys.shape), tuple(clt.W_dec[1].shape)
    ((5, 3, 8), (16, 2, 8))
    """

    def __init__(self, cfg: CLTConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        n, g = cfg.n_layers, torch.Generator().manual_seed(seed)
        self.W_enc = nn.Parameter(torch.randn(n, cfg.d_in, cfg.d_layer, generator=g) * 0.1 / cfg.d_in ** 0.5)
        self.b_enc = nn.Parameter(torch.zeros(n, cfg.d_layer))
        self.W_dec = nn.ParameterList(
            nn.Parameter(torch.randn(cfg.d_layer, n - i, cfg.d_out, generator=g) * 0.1 / cfg.d_out ** 0.5)
            for i in range(n))
        self.b_dec = nn.Parameter(torch.zeros(n, cfg.d_out))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(n, cfg.d_out, cfg.d_in))

    # ---- the maps ------------------------------------------------------------------------
    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[..., n, d_layer]`` of every layer's input ``[..., n, d_in]``."""
        return torch.einsum("...nd,ndf->...nf", x.to(self.W_enc.dtype), self.W_enc) + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return topk_act(pre, self.cfg.k) if self.cfg.activation == "topk" else torch.relu(pre)  # type: ignore[arg-type]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., n, d_layer]``."""
        return self.activation(self.encode_pre(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Outputs ``[..., n, d_out]`` of features ``[..., n, d_layer]`` (with ``b_dec``, without the skip)."""
        n = self.cfg.n_layers
        outs = [self.b_dec[j].expand(*f.shape[:-2], -1) for j in range(n)]
        for i in range(n):
            contrib = torch.einsum("...f,fjd->...jd", f[..., i, :], self.W_dec[i])  # [..., n - i, d_out]
            for j in range(i, n):
                outs[j] = outs[j] + contrib[..., j - i, :]
        return torch.stack(outs, -2)

    def skip_all(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.cfg.skip:
            return None
        return torch.einsum("...nd,ned->...ne", x.to(self.W_enc.dtype), self.W_skip)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted MLP outputs ``[..., n, d_out]`` from MLP inputs ``[..., n, d_in]``."""
        y = self.decode(self.encode(x))
        s = self.skip_all(x)
        return y if s is None else y + s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)

    # ---- the trainer's protocol ------------------------------------------------------------
    def split(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch ``[batch, n * (d_in + d_out)]`` (every ``x``, then every ``y``) as ``[batch, n, d]`` pairs."""
        c = self.cfg
        cut = c.n_layers * c.d_in
        return xy[:, :cut].unflatten(-1, (c.n_layers, c.d_in)), xy[:, cut:].unflatten(-1, (c.n_layers, c.d_out))

    def training_loss(self, xy: torch.Tensor, sparsity_coeff: float, dead: torch.Tensor | None,
                      aux_coeff: float) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Squared error summed over layers (plus the decoder-norm-weighted L1 for ``relu``)."""
        x, y = self.split(xy)
        f = self.encode(x)
        y_hat = self.decode(f)
        s = self.skip_all(x)
        if s is not None:
            y_hat = y_hat + s
        mse = (y - y_hat).pow(2).sum((-1, -2)).mean()
        parts = {"mse": float(mse.detach())}
        loss = mse
        if self.cfg.activation == "relu":
            norms = torch.stack([w.pow(2).sum((1, 2)).sqrt() for w in self.W_dec])  # [n, d_layer]
            l1 = (f * norms).sum((-1, -2)).mean()
            loss = loss + sparsity_coeff * l1
            parts["sparsity"] = float(l1.detach())
        return loss, parts, f.flatten(1)

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        self.W_enc.mul_(scale)
        for w in self.W_dec:
            w.div_(scale)
        self.b_dec.div_(scale)

    # ---- files ---------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        t = {"W_enc": self.W_enc, "b_enc": self.b_enc, "b_dec": self.b_dec}
        t.update({f"W_dec_{i}": w for i, w in enumerate(self.W_dec)})
        if self.cfg.skip:
            t["W_skip"] = self.W_skip
        return {k: v.detach().contiguous().cpu() for k, v in t.items()}

    def save(self, path: str | Path) -> Path:
        """Write ``cfg.json`` + ``clt_weights.safetensors`` into directory ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors(), path / CLT_FILE)
        (path / CFG_FILE).write_text(json.dumps(self.cfg.to_saelens(), indent=1), encoding="utf-8")
        return path

    @staticmethod
    def load(path: str | Path) -> CrossLayerTranscoder:
        """Read a CLT directory written by :meth:`save`.

        >>> import tempfile
        >>> clt = CrossLayerTranscoder(CLTConfig(layers=[0, 2], d_in=4, d_layer=8, d_out=4, k=2, skip=True))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     back = CrossLayerTranscoder.load(clt.save(d))
        >>> back.cfg.layers, torch.equal(back.W_dec[0], clt.W_dec[0])
        ([0, 2], True)
        """

        path = Path(path)
        if not (path / CFG_FILE).is_file() or not (path / CLT_FILE).is_file():
            raise TranscoderError(f"{path}: not a CLT directory (needs {CFG_FILE} and {CLT_FILE})")
        from uncover.core.userfiles import fields_from, load_tensors, read_json

        with fields_from(f"CLT config {path / CFG_FILE}"):
            clt = CrossLayerTranscoder(CLTConfig.from_dict(read_json(path / CFG_FILE, "CLT config", obj=True)))
        w = load_tensors(path / CLT_FILE, "CLT weights")
        with torch.no_grad():
            for k, v in w.items():
                p = clt.W_dec[int(k[6:])] if k.startswith("W_dec_") else getattr(clt, k)
                if tuple(v.shape) != tuple(p.shape):
                    raise TranscoderError(f"{k} has shape {tuple(v.shape)}, expected {tuple(p.shape)}")
                p.copy_(v)
        return clt
