"""ReLU SAE with an L1 penalty (Bricken et al. 2023, "Towards Monosemanticity").

``f = ReLU(pre)``; loss ``||x - x_hat||^2 + lambda * sum_i f_i``. The L1 penalty could be
dodged by shrinking ``f`` and growing ``W_dec``; as in Bricken et al. the decoder rows are
kept at unit norm (renormalised after each step, with the gradient component parallel to
each row removed before it), so the penalty measures real feature use.
Dead latents are handled by resampling (:func:`uncover.sae.train.resample_dead`).
"""

from __future__ import annotations

import torch

from uncover.sae.base import SAE


class ReLUSAE(SAE):
    """ReLU + L1 SAE (SAELens architecture ``standard``).

    >>> from uncover.sae.base import SAEConfig
    >>> sae = ReLUSAE(SAEConfig(d_in=4, d_sae=8))
    >>> bool((sae.encode(torch.randn(3, 4)) >= 0).all())
    True
    """

    architecture = "standard"
    unit_decoder = True

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def training_loss(self, x: torch.Tensor, sparsity_coeff: float, dead: torch.Tensor | None,
                      aux_coeff: float) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        f = self.encode(x)
        mse = (self.decode(f) - x).pow(2).sum(-1).mean()
        l1 = f.sum(-1).mean()
        loss = mse + sparsity_coeff * l1
        return loss, {"mse": float(mse.detach()), "sparsity": float(l1.detach())}, f
