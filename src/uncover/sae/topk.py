"""TopK SAE with the AuxK dead-latent loss (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

``f = ReLU(TopK_k(pre))``: exactly the ``k`` largest pre-activations survive (fewer if some
are negative), so L0 is set directly and no sparsity penalty is needed. Dead latents (no
firing for a while) get a gradient from the auxiliary loss: the ``k_aux`` largest dead
pre-activations must reconstruct the residual error ``e = x - x_hat``,
``L_aux = ||e - e_hat||^2 / ||e||^2`` (per batch), weighted by ``aux_coeff`` (1/32 in Gao et al.).
"""

from __future__ import annotations

import torch

from uncover.sae.base import SAE


class TopKSAE(SAE):
    """TopK SAE (SAELens architecture ``topk``; ``cfg.k`` latents per token).

    >>> from uncover.sae.base import SAEConfig
    >>> sae = TopKSAE(SAEConfig(d_in=4, d_sae=16, architecture="topk", k=3))
    >>> int((sae.encode(torch.randn(2, 4)) != 0).sum(-1).max()) <= 3
    True
    """

    architecture = "topk"
    unit_decoder = True

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        top = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def training_loss(self, x: torch.Tensor, sparsity_coeff: float, dead: torch.Tensor | None,
                      aux_coeff: float) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        pre = self.encode_pre(x)
        f = self.activation(pre)
        x_hat = self.decode(f)
        err = x - x_hat
        mse = err.pow(2).sum(-1).mean()
        parts = {"mse": float(mse.detach()), "sparsity": float((f.detach() > 0).float().sum(-1).mean())}
        loss = mse
        if dead is not None and aux_coeff > 0 and bool(dead.any()):
            k_aux = min(int(dead.sum()), max(1, x.shape[-1] // 2))
            dead_pre = pre.masked_fill(~dead, float("-inf"))
            top = dead_pre.topk(k_aux, dim=-1)
            f_aux = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            e_hat = f_aux @ self.W_dec
            e = err.detach()
            aux = (e_hat - e).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp(min=1e-12)
            loss = loss + aux_coeff * aux
            parts["aux"] = float(aux.detach())
        return loss, parts, f
