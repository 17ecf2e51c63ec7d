"""TopK SAE with the AuxK dead-latent loss (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

``f = ReLU(TopK_k(pre))``: exactly the ``k`` largest pre-activations survive (fewer if some
are negative), so L0 is set directly and no sparsity penalty is needed. Dead latents (no
firing for a while) get a gradient from the auxiliary loss: the ``k_aux`` largest dead
pre-activations must reconstruct the residual error ``e = x - x_hat``,
``L_aux = ||e - e_hat||^2 / ||e||^2`` (per batch), weighted by ``aux_coeff`` (1/32 in Gao et al.).
SAELens's ``rescale_acts_by_decoder_norm`` (select and decode as if the decoder rows had unit norm)
is computed exactly for loaded SAEs; training keeps the rows at unit norm, where it is the identity.
Training exploits the sparsity (Gao et al. do too, with sparse kernels): see ``training_loss``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from uncover.sae.base import SAE


class _GatheredEncode(torch.autograd.Function):
    """``pre[b, idx[b, j]]`` for ``pre = xc @ W_enc + b_enc`` (given, computed without autograd),
    with gradients through the ``k`` gathered encoder columns only (no dense ``[batch, d_sae]`` backward)."""

    @staticmethod
    def forward(ctx: Any, xc: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, pre: torch.Tensor,
                idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(xc, w_enc, idx)
        return pre.gather(-1, idx)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xc, w_enc, idx = ctx.saved_tensors
        flat = idx.reshape(-1)
        g_xc = g_w = g_b = None
        if ctx.needs_input_grad[0]:  # sum_j g[b, j] W_enc[:, idx[b, j]]
            g_xc = F.embedding_bag(idx, w_enc.T.contiguous(), per_sample_weights=g, mode="sum")
        if ctx.needs_input_grad[1]:  # W_enc[:, idx[b, j]] += g[b, j] xc[b]: an embedding bag's weight gradient
            with torch.enable_grad():
                wt = torch.zeros(w_enc.shape[1], w_enc.shape[0], dtype=g.dtype, requires_grad=True)
                out = F.embedding_bag(idx, wt, per_sample_weights=g.detach(), mode="sum")
                (g_w,) = torch.autograd.grad(out, wt, grad_outputs=xc.detach())
            g_w = g_w.T
        if ctx.needs_input_grad[2]:
            g_b = torch.zeros(w_enc.shape[1], dtype=g.dtype).index_add_(0, flat, g.reshape(-1))
        return g_xc, g_w, g_b, None, None


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
        if self.cfg.rescale_acts_by_decoder_norm:  # SAELens: pick the top k of pre * ||W_dec[i]||
            pre = pre * self.W_dec.norm(dim=-1)
        top = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def decode_linear(self, f: torch.Tensor) -> torch.Tensor:
        if self.cfg.rescale_acts_by_decoder_norm:  # SAELens: features divided by ||W_dec[i]|| before decoding
            f = f / self.W_dec.norm(dim=-1)
        return f @ self.W_dec + self.b_dec

    def training_loss(self, x: torch.Tensor, sparsity_coeff: float, dead: torch.Tensor | None,
                      aux_coeff: float) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        # Sparse training step: only the k chosen latents of each row carry gradient, so the
        # pre-activations are computed once without autograd, the k values gathered with a
        # sparse backward (_GatheredEncode) and decoded by an embedding bag over k decoder rows.
        # Same loss and gradients as the dense ``decode(activation(encode_pre(x)))``
        # (tests/unit/test_sae.py checks), one dense matmul per step instead of five.
        x = x.to(self.W_enc.dtype)
        xc = x - self.b_dec if self.cfg.apply_b_dec_to_input else x
        with torch.no_grad():
            pre = xc @ self.W_enc + self.b_enc  # [batch, d_sae]
            idx = pre.topk(self.cfg.k, dim=-1).indices  # [batch, k]
        vals = torch.relu(_GatheredEncode.apply(xc, self.W_enc, self.b_enc, pre, idx))  # [batch, k]
        x_hat = F.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum") + self.b_dec
        err = x - x_hat
        mse = err.pow(2).sum(-1).mean()
        f = torch.zeros_like(pre).scatter_(-1, idx, vals.detach())
        parts = {"mse": float(mse.detach()), "sparsity": float((vals.detach() > 0).float().sum(-1).mean())}
        loss = mse
        if dead is not None and aux_coeff > 0 and bool(dead.any()):
            # AuxK over the dead latents only: [batch, n_dead] pre-activations with autograd
            d_idx = dead.nonzero().flatten()
            k_aux = min(len(d_idx), max(1, x.shape[-1] // 2))
            dead_pre = xc @ self.W_enc[:, d_idx] + self.b_enc[d_idx]
            top = dead_pre.topk(k_aux, dim=-1)
            f_aux = torch.zeros_like(dead_pre).scatter(-1, top.indices, torch.relu(top.values))
            e_hat = f_aux @ self.W_dec[d_idx]
            e = err.detach()
            aux = (e_hat - e).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp(min=1e-12)
            loss = loss + aux_coeff * aux
            parts["aux"] = float(aux.detach())
        return loss, parts, f
