"""A set of transcoders standing in for a model's MLPs: per-layer transcoders or one cross-layer transcoder.

:class:`TranscoderSet` gives both kinds one interface, the one that splicing
(:func:`uncover.transcoders.evaluate.replaced_mlps`) and attribution graphs
(:mod:`uncover.graphs`) read: per covered layer, the encoder ``W_enc(l)`` ``[d_in, d_sae]``,
the decoders that write to that layer's MLP output (``decoders_to(l)``: ``(source layer,
[d_sae, d_out])`` pairs: one for a per-layer transcoder, one per earlier covered layer for a
CLT), ``b_dec(l)`` and the skip matrix ``W_skip(l)`` ``[d_out, d_in]``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from uncover.core.errors import UsageError
from uncover.transcoders.base import CFG_FILE, Transcoder, TranscoderConfig, TranscoderError, mlp_in
from uncover.transcoders.clt import CLTConfig, CrossLayerTranscoder

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

SET_FILE = "transcoders.json"


@dataclass
class SetConfig:
    """What a set holds, without weights (how results save a set): its kind, layers and transcoder configs."""

    kind: str
    layers: list[int]
    configs: list[dict[str, Any]]


class TranscoderSet(nn.Module):
    """Per-layer transcoders ``{layer: Transcoder}`` or one :class:`CrossLayerTranscoder`.

    >>> from uncover.transcoders.base import TranscoderConfig
    >>> ts = TranscoderSet({1: Transcoder(TranscoderConfig(d_in=4, d_sae=8, d_out=4, k=2))})
    >>> ts.layers, ts.kind, [src for src, _ in ts.decoders_to(1)]
    ([1], 'per-layer', [1])
    """

    def __init__(self, per_layer: dict[int, Transcoder] | SetConfig | None = None,
                 clt: CrossLayerTranscoder | None = None):
        super().__init__()
        if isinstance(per_layer, SetConfig):  # an empty set of that shape (the weights are loaded next)
            c = per_layer
            if c.kind == "cross-layer":
                per_layer, clt = None, CrossLayerTranscoder(CLTConfig(**c.configs[0]))
            else:
                per_layer = {la: Transcoder(TranscoderConfig(**d)) for la, d in zip(c.layers, c.configs)}
        if (per_layer is None) == (clt is None):
            raise TranscoderError("a TranscoderSet holds per-layer transcoders or one CLT (give exactly one)")
        self.clt = clt
        self.per_layer = nn.ModuleDict({str(k): v for k, v in sorted((per_layer or {}).items())})

    @property
    def cfg(self) -> SetConfig:
        """The set's :class:`SetConfig`."""
        if self.clt is not None:
            return SetConfig(self.kind, self.layers, [asdict(self.clt.cfg)])
        return SetConfig(self.kind, self.layers, [asdict(self._tc(la).cfg) for la in self.layers])

    @property
    def kind(self) -> str:
        """``per-layer`` or ``cross-layer``."""
        return "cross-layer" if self.clt is not None else "per-layer"

    @property
    def layers(self) -> list[int]:
        """Covered layers, ascending."""
        return list(self.clt.cfg.layers) if self.clt is not None else sorted(int(k) for k in self.per_layer)

    def _i(self, layer: int) -> int:
        try:
            return self.layers.index(layer)
        except ValueError:
            raise TranscoderError(f"layer {layer} has no transcoder; covered layers: {self.layers}") from None

    def _tc(self, layer: int) -> Transcoder:
        self._i(layer)
        return self.per_layer[str(layer)]  # type: ignore[return-value]

    def d_sae(self, layer: int) -> int:
        """Features read at ``layer``."""
        return self.clt.cfg.d_layer if self.clt is not None else self._tc(layer).cfg.d_sae

    @property
    def n_features(self) -> int:
        return sum(self.d_sae(la) for la in self.layers)

    def W_enc(self, layer: int) -> torch.Tensor:
        """``[d_in, d_sae]`` encoder of the features read at ``layer``."""
        return self.clt.W_enc[self._i(layer)] if self.clt is not None else self._tc(layer).W_enc

    def b_enc(self, layer: int) -> torch.Tensor:
        return self.clt.b_enc[self._i(layer)] if self.clt is not None else self._tc(layer).b_enc

    def encode_pre(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[..., d_sae]`` of the features read at ``layer`` from its MLP input ``[..., d_in]``."""
        w = self.W_enc(layer)
        return x.to(w.dtype) @ w + self.b_enc(layer)

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Activations ``[..., d_sae]`` of the features read at ``layer``."""
        pre = self.encode_pre(layer, x)
        return self.clt.activation(pre) if self.clt is not None else self._tc(layer).activation(pre)

    def decoders_to(self, layer: int) -> list[tuple[int, torch.Tensor]]:
        """``(source layer, W [d_sae, d_out])`` of every feature group writing to ``layer``'s MLP output."""
        j = self._i(layer)
        if self.clt is None:
            return [(layer, self._tc(layer).W_dec)]
        return [(self.layers[i], self.clt.W_dec[i][:, j - i]) for i in range(j + 1)]

    def b_dec(self, layer: int) -> torch.Tensor:
        return self.clt.b_dec[self._i(layer)] if self.clt is not None else self._tc(layer).b_dec

    def W_skip(self, layer: int) -> torch.Tensor | None:
        """``[d_out, d_in]`` skip matrix of ``layer`` or ``None``."""
        if self.clt is not None:
            return self.clt.W_skip[self._i(layer)] if self.clt.cfg.skip else None
        tc = self._tc(layer)
        return tc.W_skip if tc.cfg.skip else None

    def reconstruct(self, xs: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Predicted MLP outputs ``{layer: [..., d_out]}`` from MLP inputs ``{layer: [..., d_in]}`` (all covered)."""
        feats = {la: self.encode(la, xs[la]) for la in self.layers}
        out = {}
        for la in self.layers:
            y = self.b_dec(la) + sum(feats[src] @ w for src, w in self.decoders_to(la))
            s = self.W_skip(la)
            out[la] = y if s is None else y + xs[la].to(s.dtype) @ s.T
        return out

    def check_model(self, model: HookedModel, owner: str = "transcoders") -> None:
        """The set fits ``model``: its layers exist, its widths are the model's, each reads its layer's MLP input.

        >>> from uncover.transcoders.base import TranscoderConfig
        >>> TranscoderSet({1: Transcoder(TranscoderConfig(d_in=8, d_sae=8, d_out=8, k=2))}).check_model(model)
        Traceback (most recent call last):
        ...
        uncover.core.errors.UsageError: transcoders: the transcoder of layer 1 maps 8 -> 8 wide activations; this \
model's are 576 wide (it was trained on another model)
        """
        c = model.cfg
        bad = [la for la in self.layers if not 0 <= la < c.n_layers]
        if bad:
            raise UsageError(f"{owner}: the transcoders cover layer {bad[0]}, but this model has layers "
                             f"0..{c.n_layers - 1}")
        for la in self.layers:
            d_in, d_out = self.W_enc(la).shape[0], self.b_dec(la).shape[-1]
            if d_in != c.d_model or d_out != c.d_model:
                raise UsageError(f"{owner}: the transcoder of layer {la} maps {d_in} -> {d_out} wide activations; "
                                 f"this model's are {c.d_model} wide (it was trained on another model)")
            if self.clt is None:
                hook = self._tc(la).cfg.hook_name
                if hook and hook != mlp_in(la):
                    raise UsageError(f"{owner}: the transcoder of layer {la} reads {hook}, not the MLP input "
                                     f"{mlp_in(la)}")

    # ---- files ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """A CLT directory, or one SAELens transcoder directory per layer (``layer_{l}``) plus ``transcoders.json``."""
        path = Path(path)
        if self.clt is not None:
            return self.clt.save(path)
        path.mkdir(parents=True, exist_ok=True)
        for la in self.layers:
            self._tc(la).save(path / f"layer_{la}")
        (path / SET_FILE).write_text(json.dumps({"kind": "per-layer", "layers": self.layers}), encoding="utf-8")
        return path

    @staticmethod
    def load(path: str | Path) -> TranscoderSet:
        """Read a set written by :meth:`save`, a training run directory, a CLT or one SAELens transcoder.

        >>> import tempfile
        >>> from uncover.transcoders.base import TranscoderConfig
        >>> ts = TranscoderSet({0: Transcoder(TranscoderConfig(d_in=4, d_sae=8, d_out=4, k=2,
        ...                                                    hook_name="blocks.0.ln2.hook_normalized"))})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     TranscoderSet.load(ts.save(d)).layers
        [0]
        """
        from uncover.transcoders.base import _layer_of

        path = Path(path)
        if (path / CFG_FILE).is_file():
            from uncover.core.userfiles import read_json

            cfg = read_json(path / CFG_FILE, "transcoder config", obj=True)
            if cfg.get("architecture") == "clt":
                return TranscoderSet(clt=CrossLayerTranscoder.load(path))
            tc = Transcoder.load(path)
            return TranscoderSet({_layer_of(tc.cfg.hook_name): tc})
        for sub in ("clt/sae", "sae"):
            if (path / sub / CFG_FILE).is_file():
                return TranscoderSet.load(path / sub)
        dirs = sorted(path.glob("layer_*"), key=lambda p: int(p.name.split("_")[1]))
        found = {}
        for d in dirs:
            sub = d / "sae" if (d / "sae" / CFG_FILE).is_file() else d
            if (sub / CFG_FILE).is_file():
                found[int(d.name.split("_")[1])] = Transcoder.load(sub)
        if not found:
            raise TranscoderError(f"{path}: no transcoders (a CLT or transcoder directory, layer_* directories, or "
                                  "a training run)")
        return TranscoderSet(found)
