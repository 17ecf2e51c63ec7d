"""Crosscoders for model diffing (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and
Model Diffing").

A crosscoder reads the same hook of two models on the same tokens, ``x_A`` and ``x_B``
(``[..., d_model]`` each). One encoder over both gives one sparse code
``f = ReLU(x_A @ W_enc^A + x_B @ W_enc^B + b_enc)`` (``[..., d_sae]``); one decoder per model
reconstructs each, ``x_hat_m = f @ W_dec^m + b_dec^m``. The loss is the paper's:
``sum_m ||x_m - x_hat_m||^2 + lambda * sum_i f_i (||W_dec^A_i|| + ||W_dec^B_i||)``, the sparsity
penalty weighted by the *sum* of the per-model decoder norms, so a latent costs according to how much
it writes into each model and one that only one model needs can drop the other decoder.

It is an SAE on the concatenated input ``[x_A, x_B]`` (``d_in = 2 d_model``, ``W_enc`` ``[2 d, d_sae]``,
``W_dec`` ``[d_sae, 2 d]`` whose halves are the per-model decoders), so the SAE trainer
(:func:`uncover.sae.train.train_sae`: warm-ups, input scaling folded back, checkpoints, exact resume)
trains it unchanged. The *relative decoder norm* ``r_i = ||W_dec^B_i|| / (||W_dec^A_i|| + ||W_dec^B_i||)``
sorts latents: about 0.5 shared by both models, near 0 only in A (the base), near 1 only in B (the
changed model) (:func:`latent_classes`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from uncover.core.errors import UsageError
from uncover.sae import SAE, SAEConfig

CROSSCODER_FILE, CROSSCODER_CFG = "crosscoder.safetensors", "crosscoder.json"

#: relative-norm bounds of the classes (Lindsey et al.'s histogram has peaks at 0, 0.5 and 1)
SHARED = (0.3, 0.7)
EXCLUSIVE = 0.1
CLASSES = ("shared", "base-only", "changed-only", "mixed", "dead")


class Crosscoder(SAE):
    """Two-model crosscoder (see the module docstring); ``cfg.d_in`` is ``2 * d_model``.

    >>> cc = Crosscoder.create(d_model=4, d_sae=8)
    >>> xa, xb = torch.randn(3, 4), torch.randn(3, 4)
    >>> f = cc.encode_pair(xa, xb)
    >>> ra, rb = cc.decode_pair(f)
    >>> f.shape, ra.shape, cc.relative_norms().shape
    (torch.Size([3, 8]), torch.Size([3, 4]), torch.Size([8]))
    """

    architecture = "crosscoder"
    unit_decoder = False  # the penalty is weighted by the decoder norms: they must stay free

    @staticmethod
    def create(d_model: int, d_sae: int, hook_name: str = "", models: tuple[str, str] = ("", ""),
               seed: int = 0) -> Crosscoder:
        """A fresh crosscoder for two models of width ``d_model``."""
        cfg = SAEConfig(d_in=2 * d_model, d_sae=d_sae, architecture="crosscoder", hook_name=hook_name,
                        apply_b_dec_to_input=False, model_name=" | ".join(models),
                        extra={"models": list(models)})
        return Crosscoder(cfg, seed=seed)

    @property
    def d_model(self) -> int:
        return self.cfg.d_in // 2

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    # ---- the two models ---------------------------------------------------------------------------
    def encode_pair(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """Latents ``[..., d_sae]`` of paired activations ``[..., d_model]`` of the base (A) and changed (B) model."""
        return self.encode(torch.cat([xa, xb], dim=-1))

    def decode_pair(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstructions ``([..., d_model], [..., d_model])`` of the base and changed model."""
        out = self.decode(f)
        return out[..., : self.d_model], out[..., self.d_model :]

    def decoders(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-model decoders ``W_dec^A``, ``W_dec^B`` (``[d_sae, d_model]`` each)."""
        return self.W_dec[:, : self.d_model], self.W_dec[:, self.d_model :]

    @torch.no_grad()
    def decoder_norms(self) -> torch.Tensor:
        """``[d_sae, 2]``: ``||W_dec^A_i||`` and ``||W_dec^B_i||``."""
        a, b = self.decoders()
        return torch.stack([a.norm(dim=-1), b.norm(dim=-1)], dim=-1)

    @torch.no_grad()
    def relative_norms(self) -> torch.Tensor:
        """``[d_sae]``: ``||d_B|| / (||d_A|| + ||d_B||)`` per latent (0.5 shared, 0 base-only, 1 changed-only)."""
        n = self.decoder_norms()
        return n[:, 1] / n.sum(-1).clamp(min=1e-12)

    @torch.no_grad()
    def decoder_cosines(self) -> torch.Tensor:
        """``[d_sae]``: cosine of each latent's two decoder vectors."""
        a, b = self.decoders()
        return torch.nn.functional.cosine_similarity(a, b, dim=-1)

    # ---- training ----------------------------------------------------------------------------------
    def training_loss(self, x: torch.Tensor, sparsity_coeff: float, dead: torch.Tensor | None,
                      aux_coeff: float) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Lindsey et al.'s loss on a batch ``[batch, 2 d_model]`` of concatenated pairs."""
        f = self.encode(x)
        mse = (self.decode(f) - x).pow(2).sum(-1).mean()
        a, b = self.decoders()
        penalty = (f * (a.norm(dim=-1) + b.norm(dim=-1))).sum(-1).mean()
        loss = mse + sparsity_coeff * penalty
        return loss, {"mse": float(mse.detach()), "sparsity": float(penalty.detach())}, f

    # ---- files -------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``crosscoder.json`` + ``crosscoder.safetensors`` into directory ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: getattr(self, k).detach().contiguous().cpu() for k in self.state_keys}, path / CROSSCODER_FILE)
        cfg = {"architecture": "crosscoder", "d_model": self.d_model, "d_sae": self.cfg.d_sae,
               "hook_name": self.cfg.hook_name, "models": self.cfg.extra.get("models", ["", ""]),
               "paper": "Lindsey et al. 2024, Sparse Crosscoders"}
        (path / CROSSCODER_CFG).write_text(json.dumps(cfg, indent=1), encoding="utf-8")
        return path

    @staticmethod
    def load(path: str | Path, norm_scaling_factor: float | None = None) -> Crosscoder:  # type: ignore[override]
        """Read a crosscoder directory (``path`` itself or ``path/sae`` of a training run).

        >>> import tempfile
        >>> cc = Crosscoder.create(d_model=4, d_sae=8)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     back = Crosscoder.load(cc.save(d))
        >>> torch.equal(back.W_dec, cc.W_dec)
        True
        """

        from uncover.core.userfiles import fields_from, load_tensors, read_json

        p = crosscoder_dir(path)
        meta = read_json(p / CROSSCODER_CFG, "crosscoder config", keys=["d_model", "d_sae"])
        with fields_from(f"crosscoder config {p / CROSSCODER_CFG}"):
            cc = Crosscoder.create(int(meta["d_model"]), int(meta["d_sae"]), meta.get("hook_name", ""),
                                   tuple(meta.get("models", ["", ""])))  # type: ignore[arg-type]
        cc.load_weights(load_tensors(p / CROSSCODER_FILE, "crosscoder weights"))
        return cc


def crosscoder_dir(path: str | Path) -> Path:
    """``path`` or ``path/sae`` (a training run), whichever holds a crosscoder; else a :class:`UsageError`."""
    p = Path(path)
    for d in (p / "sae", p):
        if (d / CROSSCODER_CFG).is_file() and (d / CROSSCODER_FILE).is_file():
            return d
    raise UsageError(f"{p} holds no crosscoder ({CROSSCODER_CFG} and {CROSSCODER_FILE}, or a run directory with "
                     "sae/ holding them)")


def latent_classes(rel: torch.Tensor, fires: torch.Tensor | None = None) -> list[str]:
    """Class of each latent from its relative decoder norm (and whether it ever fires).

    >>> latent_classes(torch.tensor([0.5, 0.02, 0.97, 0.8]), torch.tensor([True, True, True, False]))
    ['shared', 'base-only', 'changed-only', 'dead']
    """
    out = []
    for i, r in enumerate(rel.tolist()):
        if fires is not None and not bool(fires[i]):
            out.append("dead")
        elif SHARED[0] <= r <= SHARED[1]:
            out.append("shared")
        elif r < EXCLUSIVE:
            out.append("base-only")
        elif r > 1 - EXCLUSIVE:
            out.append("changed-only")
        else:
            out.append("mixed")
    return out


def crosscoder_info(cc: Crosscoder) -> dict[str, Any]:
    """What a crosscoder is, as JSON values (saved with results)."""
    return {"d_model": cc.d_model, "d_sae": cc.cfg.d_sae, "hook_name": cc.cfg.hook_name,
            "models": cc.cfg.extra.get("models", ["", ""])}
