"""Steering vectors: per-layer residual directions, saved as safetensors or GGUF control vectors.

A :class:`SteeringVector` maps layers to ``[d_model]`` vectors at one residual hook point.
:meth:`SteeringVector.save` writes safetensors (tensors ``layer.{l}``) with JSON metadata
(model, hook point, method, free-form facts) in the file header; :meth:`to_gguf` writes the
control-vector format that llama.cpp's ``--control-vector`` reads (tensors ``direction.{l}``,
``general.architecture = "controlvector"``, ``controlvector.model_hint``,
``controlvector.layer_count``). llama.cpp numbers layers from 1 and adds ``direction.{l}``
to the output of block ``l - 1``, so our ``blocks.{l}.hook_resid_post`` vectors are written
as ``direction.{l+1}`` (``hook_resid_pre`` of layer ``l`` as ``direction.{l}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import resid_name

POINTS = ("hook_resid_pre", "hook_resid_post")
FORMAT = "uncover-steering-vector"


@dataclass
class SteeringVector:
    """Vectors to add to the residual stream, one per layer.

    Attributes:
        vectors: layer -> ``[d_model]`` float tensor.
        point: ``hook_resid_pre`` or ``hook_resid_post``.
        model: the model name the vectors were computed on.
        meta: method, dataset, strength and other JSON-ready facts.

    >>> v = SteeringVector({3: torch.ones(4)}, model="tiny")
    >>> v.hook(3), v.d_model
    ('blocks.3.hook_resid_pre', 4)
    """

    vectors: dict[int, torch.Tensor]
    point: str = "hook_resid_pre"
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.point not in POINTS:
            raise UncoverError(f"unknown point {self.point!r}; valid: {', '.join(POINTS)}")
        if not self.vectors:
            raise UncoverError("a steering vector needs at least one layer")
        dims = {int(v.shape[-1]) for v in self.vectors.values()}
        for layer, v in self.vectors.items():
            if v.dim() != 1:
                raise UncoverError(f"layer {layer}: vector must be [d_model], got shape {tuple(v.shape)}")
            if not bool(torch.isfinite(v).all()):
                raise UncoverError(f"layer {layer}: vector contains NaN or inf")
            if float(v.norm()) == 0.0:
                raise UncoverError(f"layer {layer}: vector is zero; nothing to steer with")
        if len(dims) != 1:
            raise UncoverError(f"vectors have different sizes {sorted(dims)}")
        self.vectors = {int(k): v.detach().float().cpu() for k, v in sorted(self.vectors.items())}

    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def hook(self, layer: int) -> str:
        return resid_name(layer, self.point)

    def check(self, model: Any) -> SteeringVector:
        """Raise ``UncoverError`` if a layer is out of range or the size differs from the model's."""
        n = model.cfg.n_layers
        bad = [la for la in self.layers if not 0 <= la < n]
        if bad:
            raise UncoverError(f"layer(s) {bad} out of range; this model has layers 0..{n - 1}")
        if self.d_model != model.cfg.d_model:
            raise UncoverError(f"vector size {self.d_model} does not match the model's d_model {model.cfg.d_model}")
        return self

    # ---- safetensors --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors; metadata in the header, also mirrored to ``path.json``)."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"format": FORMAT, "point": self.point, "model": self.model, "meta": self.meta}
        save_file({f"layer.{k}": v.contiguous() for k, v in self.vectors.items()}, str(path),
                  metadata={"uncover": json.dumps(meta)})
        path.with_suffix(path.suffix + ".json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return path

    @staticmethod
    def load(path: str | Path) -> SteeringVector:
        """Read a file written by :meth:`save` (or a ``.gguf`` control vector)."""
        path = Path(path)
        if not path.is_file():
            raise UncoverError(f"{path}: no such file")
        if path.suffix.lower() == ".gguf":
            return SteeringVector.from_gguf(path)
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("uncover")
                if raw is None:
                    raise UncoverError(f"{path}: not an uncover steering vector (no 'uncover' metadata)")
                meta = json.loads(raw)
                vecs = {int(k.split(".")[1]): f.get_tensor(k) for k in f.keys()}
            return SteeringVector(vecs, meta["point"], meta.get("model", ""), meta.get("meta", {}))
        except UncoverError:
            raise
        except Exception as e:  # a damaged header, bad JSON, odd tensor names: never a traceback
            raise UncoverError(f"{path}: not a readable steering vector file ({type(e).__name__}: "
                               f"{str(e).strip()[:120]}); give a .safetensors file saved by uncover or a .gguf "
                               "control vector") from None

    # ---- GGUF (llama.cpp control vectors) -------------------------------------------------
    def to_gguf(self, path: str | Path) -> Path:
        """Write a llama.cpp control vector (``direction.{n}``, n = layer + 1 for ``hook_resid_post``)."""
        import gguf

        w = gguf.GGUFWriter(str(path), "controlvector")
        w.add_string("controlvector.model_hint", self.meta.get("model_hint", _hint(self.model)))
        w.add_int32("controlvector.layer_count", len(self.vectors))
        shift = 1 if self.point == "hook_resid_post" else 0
        for layer, v in self.vectors.items():
            w.add_tensor(f"direction.{layer + shift}", v.numpy().astype("float32"))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return Path(path)

    @staticmethod
    def from_gguf(path: str | Path) -> SteeringVector:
        """Read a llama.cpp control vector as ``hook_resid_post`` vectors (``direction.{n}`` -> layer ``n - 1``)."""
        import gguf

        try:
            r = gguf.GGUFReader(str(path))
        except Exception as e:  # not GGUF at all
            raise UncoverError(f"{path}: not a readable GGUF file ({type(e).__name__}: "
                               f"{str(e).strip()[:120]})") from None
        arch = r.fields.get("general.architecture")
        if arch is None or bytes(arch.parts[arch.data[0]]).decode() != "controlvector":
            raise UncoverError(f"{path}: not a GGUF control vector (general.architecture is not 'controlvector')")
        hint = r.fields.get("controlvector.model_hint")
        model = bytes(hint.parts[hint.data[0]]).decode() if hint is not None else ""
        vecs = {int(t.name.split(".")[1]) - 1: torch.tensor(t.data.copy()).float().flatten() for t in r.tensors
                if t.name.startswith("direction.")}
        return SteeringVector(vecs, "hook_resid_post", model, {"source": "gguf"})


def _hint(name: str) -> str:
    """llama.cpp's model hint is the architecture name (``llama`` for SmolLM2)."""
    low = name.lower()
    for arch in ("llama", "mistral", "qwen3", "qwen2", "gemma3", "gemma2", "gemma", "gpt2", "gptneox", "phi3"):
        if arch in low:
            return arch
    return "llama" if "smollm" in low else low
