"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity
with JumpReLU Sparse Autoencoders").

``f_i = pre_i * H(pre_i - theta_i)`` with a learnt threshold ``theta_i > 0`` per latent, and
an L0 sparsity penalty ``lambda * sum_i H(pre_i - theta_i)``. Dead latents (no firing for a
while) get the pre-activation loss of Anthropic's JumpReLU recipe (Conerly et al. 2025; SAELens's
``pre_act_loss``), ``aux_coeff * sum_dead relu(theta_i - pre_i) ||W_dec_i||``, which lifts them
back towards their thresholds. The Heaviside step has no
useful gradient in ``theta``; the straight-through estimator with the rectangle kernel
``K(u) = 1[|u| < 1/2]`` and bandwidth ``eps`` gives
``d JumpReLU / d theta = -(theta / eps) K((pre - theta) / eps)`` and
``d H / d theta = -(1 / eps) K((pre - theta) / eps)``; gradients in ``pre`` are the exact ones
(``H`` for the JumpReLU, none for the step). ``theta`` is stored as ``log_threshold``
in training and saved as ``threshold`` (SAELens format).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from uncover.sae.base import SAE, SAEConfig


def _rect(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        g_pre = grad * (pre > theta).to(pre.dtype)
        g_theta = -(theta / ctx.eps) * _rect((pre - theta) / ctx.eps) * grad
        return g_pre, g_theta.reshape(-1, theta.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        g_theta = -(1.0 / ctx.eps) * _rect((pre - theta) / ctx.eps) * grad
        return torch.zeros_like(pre), g_theta.reshape(-1, theta.shape[-1]).sum(0), None


class JumpReLUSAE(SAE):
    """JumpReLU SAE (SAELens architecture ``jumprelu``, with a ``threshold`` tensor).

    >>> from uncover.sae.base import SAEConfig
    >>> sae = JumpReLUSAE(SAEConfig(d_in=4, d_sae=8, architecture="jumprelu"), init_threshold=0.001)
    >>> pre = torch.tensor([[0.0005, 0.5, -1.0, 0.002, 0.0, 0.0, 0.0, 0.0]])
    >>> sae.activation(pre)[0, :4].tolist()
    [0.0, 0.5, -0.0, 0.0020000000949949026]
    """

    architecture = "jumprelu"
    state_keys = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
    unit_decoder = False

    init_options = ("bandwidth",)  # constructor options that are not weights: saved with results

    def __init__(self, cfg: SAEConfig, seed: int = 0, init_threshold: float = 0.05, bandwidth: float = 0.05):
        # Defaults are in the units the trainer feeds (inputs scaled to E||x||^2 = d_in, i.e. about
        # unit scale per coordinate): the paper's 0.001 assumes inputs scaled to E||x||^2 = 1, and
        # with our scale it leaves almost no pre-activations inside the kernel, so theta never learns.
        super().__init__(cfg, seed)
        self.bandwidth = bandwidth
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), float(torch.tensor(init_threshold).log())))

    @property
    def threshold(self) -> torch.Tensor:
        """``[d_sae]`` thresholds ``theta``."""
        return self.log_threshold.exp()

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self._copy(weights, ("W_enc", "b_enc", "W_dec", "b_dec"))
        self.log_threshold.copy_(weights["threshold"].float().clamp(min=1e-12).log())

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return _JumpReLU.apply(pre, self.threshold, self.bandwidth)

    def training_loss(self, x: torch.Tensor, sparsity_coeff: float, dead: torch.Tensor | None,
                      aux_coeff: float) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        pre = self.encode_pre(x)
        f = self.activation(pre)
        mse = (self.decode(f) - x).pow(2).sum(-1).mean()
        l0 = _Step.apply(pre, self.threshold, self.bandwidth).sum(-1).mean()
        loss = mse + sparsity_coeff * l0
        parts = {"mse": float(mse.detach()), "sparsity": float(l0.detach())}
        if dead is not None and aux_coeff > 0 and bool(dead.any()):
            # a dead latent's pre-activation sits below its threshold and gets no gradient from the
            # reconstruction; pull it up towards the threshold (Anthropic's pre-activation loss,
            # restricted to dead latents as SAELens does)
            pre_act = ((self.threshold.detach() - pre).relu() * dead * self.W_dec.norm(dim=-1)).sum(-1).mean()
            loss = loss + aux_coeff * pre_act
            parts["aux"] = float(pre_act.detach())
        return loss, parts, f
