"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned
in One-Shot").

For each linear layer with calibration inputs ``X``, the layer-wise problem
``min ‖W X − Ŵ X‖²`` is solved approximately by Optimal Brain Surgeon updates: columns are
processed left to right; pruning weight ``w_q`` of a row moves the error
``w_q / [H⁻¹]_qq · H⁻¹[q, :]`` onto the not-yet-processed columns, where ``H = XᵀX`` (dampened by
``damp · mean(diag H)``) and ``H⁻¹`` is that of the remaining columns, read off the upper
Cholesky factor of ``H⁻¹``. Updates are applied lazily in column blocks of ``blocksize``. The
mask is chosen per column block by ``w² / [U]_qq²`` over the whole block (adaptive mask
selection), or per row among each M consecutive columns for N:M.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from uncover.pruning.base import Pruning, PruningError, lowest_mask, n_pruned, resolve_target
from uncover.pruning.calibrate import InputStats, calibration_tokens, prune_linears

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def inverse_hessian_factor(h: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, dead)``: upper Cholesky factor of ``(H + λI)⁻¹`` ``[d_in, d_in]`` and the columns never active.

    Row ``q`` of ``U`` divided by ``U[q, q]`` is row 0 of the inverse of ``H[q:, q:]``, times its
    ``[0, 0]`` entry: the OBS update of column ``q`` given columns ``< q`` are done.

    >>> u, dead = inverse_hessian_factor(torch.eye(2) * 4, damp=0.0)
    >>> torch.diagonal(u)
    tensor([0.5000, 0.5000])
    """
    h = h.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    lam = damp * torch.diagonal(h).mean()
    h.diagonal().add_(lam)
    try:
        low = torch.linalg.cholesky(h)
        hinv = torch.cholesky_inverse(low)
        return torch.linalg.cholesky(hinv, upper=True), dead
    except torch.linalg.LinAlgError:
        raise PruningError(f"the calibration Hessian is not positive definite with damp={damp}; "
                           "use a larger damp (e.g. 0.1) or more calibration tokens") from None


def sparsegpt_weight(
    w: torch.Tensor,
    stats: InputStats | torch.Tensor | None,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    *,
    blocksize: int = 128,
    damp: float = 0.01,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w`` ``[d_out, d_in]`` pruned with OBS updates, from ``XᵀX`` (``stats`` or a ``[d_in, d_in]`` tensor).

    ``mask``: a fixed ``[d_out, d_in]`` boolean mask (True = pruned) instead of choosing one.
    Computed in float32 (float64 for float64 weights) and returned in ``w``'s dtype.

    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> w = torch.tensor([[1., 2., 3., 4.]])
    >>> (sparsegpt_weight(w, x.T @ x, 0.5) == 0).sum().item()
    2
    """
    if stats is None:
        raise PruningError("SparseGPT needs the calibration Hessian XᵀX of the layer's inputs")
    h = stats.value if isinstance(stats, InputStats) else stats
    if h is None or h.dim() != 2:
        raise PruningError("SparseGPT needs 'hessian' statistics (XᵀX), not per-column norms")
    if blocksize < 1:
        raise PruningError(f"blocksize must be positive, not {blocksize}")
    dt = torch.float64 if w.dtype == torch.float64 else torch.float32
    W = w.detach().to(dt).clone()
    rows, cols = W.shape
    U, dead = inverse_hessian_factor(h.to(dt), damp)
    W[:, dead] = 0.0
    full_mask = torch.zeros_like(W, dtype=torch.bool) if mask is None else mask.to(W.device).bool()
    # work on the transpose so that a column of W is a contiguous row (much faster updates on CPU)
    Wt, Mt = W.T.contiguous(), full_mask.T.contiguous()  # [d_in, d_out]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = Wt[i1:i2]  # a view: updates write Wt
        U1 = U[i1:i2, i1:i2]
        d = torch.diagonal(U1)
        if mask is None and nm is None:
            score = W1**2 / d.unsqueeze(1) ** 2
            Mt[i1:i2] = lowest_mask(score.flatten(), n_pruned(score.numel(), sparsity)).view(score.shape)
        Err1 = torch.empty_like(W1)
        for i in range(i2 - i1):
            if mask is None and nm is not None and (i1 + i) % nm[1] == 0:
                n, m = nm
                score = W1[i : i + m] ** 2 / d[i : i + m].unsqueeze(1) ** 2
                Mt[i1 + i : i1 + i + m] = lowest_mask(score, m - n, dim=0)
            err = Err1[i]
            torch.mul(W1[i], Mt[i1 + i], out=err)  # the pruned part of the column, w - q
            err.div_(d[i])
            W1[i:].addr_(U1[i, i:], err, alpha=-1.0)  # OBS update of the remaining columns of the block
            W1[i].masked_fill_(Mt[i1 + i], 0.0)
        if i2 < cols:
            Wt[i2:].addmm_(U[i1:i2, i2:].T, Err1, alpha=-1.0)
    W, full_mask = Wt.T, Mt.T
    return W.masked_fill(full_mask, 0.0).to(w.dtype)


def sparsegpt_prune(
    model: HookedModel,
    sparsity: float | None = 0.5,
    pattern: str | None = None,
    *,
    tokens: torch.Tensor | None = None,
    n_samples: int = 16,
    seq_len: int = 128,
    seed: int = 0,
    blocksize: int = 128,
    damp: float = 0.01,
) -> Pruning:
    """SparseGPT-prune every block linear of ``model`` in place; the result reverts it.

    >>> m = tiny("llama")  # a tiny random model; on the embedded model: sparsegpt_prune(model, 0.5)
    >>> p = sparsegpt_prune(m, 0.5, tokens=torch.randint(3, 64, (2, 8)))
    >>> round(p.overall_sparsity(), 2)
    0.5
    >>> p.revert()
    """
    resolve_target(sparsity, pattern)
    if blocksize < 1 or not 0 <= damp:
        raise PruningError(f"need blocksize >= 1 and damp >= 0, not {blocksize} and {damp}")
    _, nm = resolve_target(sparsity, pattern)
    if nm is not None and blocksize % nm[1]:
        raise PruningError(f"blocksize {blocksize} must be a multiple of M={nm[1]} for pattern {pattern}")
    if tokens is None:
        tokens = calibration_tokens(model, n_samples, seq_len, seed)

    def fn(w: torch.Tensor, st: InputStats | None, s: float, nm_: tuple[int, int] | None) -> torch.Tensor:
        return sparsegpt_weight(w, st, s, nm_, blocksize=blocksize, damp=damp)

    return prune_linears(model, "sparsegpt", sparsity, pattern, fn, stats="hessian", tokens=tokens,
                         options={"n_samples": int(tokens.shape[0]), "seq_len": int(tokens.shape[1]), "seed": seed,
                                  "blocksize": blocksize, "damp": damp})
