"""Tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens").

The logit lens decodes the residual stream after layer ``l`` with the model's own final
norm and unembedding, which assumes that intermediate layers already speak the final
layer's "language". The tuned lens learns one affine *translator* per layer boundary,
``h ↦ h + A_l h + b_l`` (initialised to the identity, ``A_l = 0, b_l = 0``), applied before
the final norm and unembedding, trained to minimise ``KL(final output ‖ lens output)``
on ordinary text with the model frozen. Decoding then reuses the logit lens machinery
(:func:`uncover.lenses.logit_lens.run_lens`), so results have the same shape and views.
This module holds the lens (:class:`TunedLens`: translators, save and load) and decoding with it;
training is :func:`uncover.lenses.tuned_lens_train.train_tuned_lens`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from uncover.core.errors import UncoverError
from uncover.lenses.logit_lens import LensResult, run_lens

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

FORMAT = "uncover-tuned-lens"


class TunedLens(nn.Module):
    """One affine translator per layer boundary ``0 .. n_layers - 1`` (``0`` = the embeddings).

    ``translate(layer, h) = h + h @ A[layer].T + b[layer]`` for ``h [..., d_model]``; a new lens
    is the identity, so it decodes exactly like the logit lens until it is trained.

    >>> lens = TunedLens(n_layers=3, d_model=8, model_name="tiny")
    >>> h = torch.randn(2, 8)
    >>> torch.equal(lens.translate(1, h), h)
    True
    >>> lens
    TunedLens('tiny', n_layers=3, d_model=8)
    """

    def __init__(self, n_layers: int, d_model: int, model_name: str = ""):
        super().__init__()
        if n_layers < 1 or d_model < 1:
            raise UncoverError(f"a tuned lens needs n_layers >= 1 and d_model >= 1, got {n_layers}, {d_model}")
        self.model_name = model_name
        self.n_layers = n_layers
        self.d_model = d_model
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        with torch.no_grad():
            for t in self.translators:
                t.weight.zero_()
                t.bias.zero_()
        self.info: dict = {}  # facts saved with the lens: training settings and losses

    @classmethod
    def for_model(cls, model: HookedModel) -> TunedLens:
        """An identity lens shaped for ``model``.

        >>> lens = TunedLens.for_model(model)
        >>> lens.n_layers
        30
        """
        return cls(model.cfg.n_layers, model.cfg.d_model, model.name).to(model.device)

    def translate(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """The residual after ``layer`` layers, ``h [..., d_model]``, mapped for decoding.

        Computed in the lens's dtype; returned on ``h``'s device.

        >>> lens = TunedLens(n_layers=2, d_model=4)
        >>> lens.translate(0, torch.ones(4)).tolist()
        [1.0, 1.0, 1.0, 1.0]
        """
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} has no translator; valid: 0 .. {self.n_layers - 1}")
        t = self.translators[layer]
        x = h.to(t.weight)
        return (x + t(x)).to(h.device)

    def forward(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`translate`."""
        return self.translate(layer, h)

    def check(self, model: HookedModel) -> None:
        """Raise ``UncoverError`` if ``model`` is not shaped like the model this lens was made for.

        >>> TunedLens(2, 4, "a").check(model)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        uncover.core.errors.UncoverError: this tuned lens was made for 'a' (n_layers=2, d_model=4)...
        """
        c = model.cfg
        if (c.n_layers, c.d_model) != (self.n_layers, self.d_model):
            raise UncoverError(
                f"this tuned lens was made for {self.model_name!r} (n_layers={self.n_layers}, "
                f"d_model={self.d_model}), but model {model.name!r} has n_layers={c.n_layers}, "
                f"d_model={c.d_model}; train one for this model with train_tuned_lens(model)"
            )
        if self.model_name and model.name != self.model_name:
            warnings.warn(f"tuned lens trained on {self.model_name!r} used with {model.name!r} (same shape)",
                          stacklevel=3)

    def save(self, path: str | Path) -> Path:
        """Write the weights and metadata (model name, shape, training info) as safetensors.

        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "lens.safetensors")
        >>> _ = TunedLens(2, 4, "tiny").save(path)
        >>> TunedLens.load(path).n_layers
        2
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"format": FORMAT, "version": "1", "model_name": self.model_name, "n_layers": str(self.n_layers),
                "d_model": str(self.d_model), "info": json.dumps(self.info)}
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path, model: HookedModel | None = None) -> TunedLens:
        """Read a lens written by :meth:`save`; with ``model``, check its shape and move it there.

        >>> path = TunedLens.for_model(model).save(tmp / "identity.lens.safetensors")
        >>> lens = TunedLens.load(path, model)
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise UncoverError(f"{path}: no such tuned lens file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise UncoverError(f"{path}: not a safetensors file ({e})") from None
        if meta.get("format") != FORMAT:
            raise UncoverError(f"{path}: not a tuned lens saved by uncover (format={meta.get('format')!r})")
        from uncover.core.userfiles import fields_from, load_tensors, parse_json

        where = f"tuned lens {path}: metadata"
        with fields_from(where):
            lens = cls(int(meta["n_layers"]), int(meta["d_model"]), meta.get("model_name", ""))
            if lens.n_layers < 1 or lens.d_model < 1:
                raise UncoverError(f"{where}: n_layers and d_model must be >= 1, got {lens.n_layers}, {lens.d_model}")
        lens.info = parse_json(meta.get("info") or "{}", f"{where} 'info'")
        tensors = load_tensors(path, "tuned lens")
        want, got = set(lens.state_dict()), set(tensors)
        if want != got:
            raise UncoverError(f"tuned lens {path}: its tensors do not match n_layers={lens.n_layers}, "
                               f"d_model={lens.d_model} (missing {sorted(want - got)[:3]}, unexpected "
                               f"{sorted(got - want)[:3]}); train it again with uncover train-lens")
        try:
            lens.load_state_dict(tensors)
        except RuntimeError as e:
            raise UncoverError(f"tuned lens {path}: tensor shapes do not match its metadata "
                               f"({' '.join(str(e).split())[:150]}); train it again with uncover train-lens") from None
        if model is not None:
            lens.check(model)
            lens.to(model.device)
        return lens

    def __repr__(self) -> str:
        return f"TunedLens({self.model_name!r}, n_layers={self.n_layers}, d_model={self.d_model})"


def tuned_lens(
    model: HookedModel,
    prompts: str | Sequence[str] | torch.Tensor,
    lens: TunedLens,
    *,
    positions: int | Sequence[int] | None = -1,
    targets: Sequence[str | int] | str | int | None = None,
    k: int = 5,
) -> LensResult:
    """Tuned lens: each layer's residual, translated by ``lens``, through the final norm and unembedding.

    Same arguments and result as :func:`uncover.lenses.logit_lens.logit_lens` (with
    ``lens="tuned"``); the last layer boundary is the model's own output, untranslated.

    >>> lens = TunedLens.for_model(model)  # or TunedLens.load("smollm2.lens.safetensors", model)
    >>> r = tuned_lens(model, "The Eiffel Tower is in the city of", lens, targets=[" Paris"])
    >>> r.target_ranks[0, -1, -1, 0]
    tensor(0)
    """
    lens.check(model)
    return run_lens(model, prompts, positions=positions, targets=targets, k=k, translate=lens.translate,
                    lens="tuned")
