"""QK and OV circuits of attention heads (Elhage et al. 2021, "A
Mathematical Framework for Transformer Circuits"; Olsson et al. 2022, "In-context Learning and
Induction Heads").

A head's OV circuit ``W_V W_O`` (``[d_model, d_model]``, rank ``d_head``) says what it writes
given what it reads; its full OV circuit ``W_E W_V W_O W_U`` (``[d_vocab, d_vocab]``) which output
logits each attended-to token raises. The QK circuit ``W_Q W_Kᵀ`` scores query against key;
its full form ``W_E W_Q W_Kᵀ W_Eᵀ`` does so token against token. All are :class:`LowRank`.

Norm convention (as TransformerLens's ``fold_ln`` and ``FactoredMatrix``): each norm's weight is
folded into the matrices that read its output (``diag(w) W``; LayerNorm also centres the reading
weights, ``W - mean_rows(W)``), Gemma's ``1 + w`` included; per-head q/k norms (Qwen3, Gemma 3)
fold into ``W_Q``/``W_K`` columns and Gemma 2/3's post-attention norm into ``W_O``; the embedding
scale multiplies ``W_E``. The norms' data-dependent ``1/scale`` factors, all biases, positional
embeddings and rotary rotations are left out (a QK circuit is at relative position 0), as in
TransformerLens. Grouped-query attention: query head ``h`` uses key/value head
``h // n_groups``, by indexing (no expanded copy of the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch

from uncover.core.errors import UncoverError
from uncover.heads.factored import Index, LowRank

if TYPE_CHECKING:
    from torch import nn

    from uncover.hooks.hooked import HookedModel

BASES = ("vocab", "resid")


@dataclass
class HeadWeights:
    """Folded weights of the heads of one layer (see the module docstring for the convention).

    Attributes:
        W_Q, W_K, W_V: ``[head, d_model, d_head]`` per query head.
        W_O: ``[head, d_head, d_model]``.
    """

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor


def fold_reader(model: HookedModel, norm: nn.Module | None, W: torch.Tensor) -> torch.Tensor:
    """``diag(w) W`` (centred over ``d_model`` rows for LayerNorm) for ``W: [..., d_model, x]``.

    >>> fold_reader(model, model.norm(0), model.W_Q(0)).shape
    torch.Size([9, 576, 64])
    """
    if norm is not None:
        w = model.adapter.norm_params(norm)[0]
        if w is not None:
            W = W * w.to(W)[:, None]
    if model.cfg.norm_kind == "layer":
        W = W - W.mean(-2, keepdim=True)
    return W


def _norm_weight(model: HookedModel, mod: nn.Module | None, like: torch.Tensor) -> torch.Tensor | None:
    if mod is None:
        return None
    w = model.adapter.norm_params(mod)[0]
    return None if w is None else w.to(like)


def head_weights(model: HookedModel, layer: int, dtype: torch.dtype = torch.float32) -> HeadWeights:
    """Folded ``W_Q W_K W_V W_O`` of every query head of ``layer``, in ``dtype``.

    >>> hw = head_weights(model, 5)
    >>> hw.W_K.shape
    torch.Size([9, 576, 64])
    """
    c, f = model.cfg, model.adapter.family
    if not 0 <= layer < c.n_layers:
        raise UncoverError(f"layer {layer} out of range; valid: 0 .. {c.n_layers - 1}")
    kv = torch.arange(c.n_heads) // c.n_groups  # key/value head of each query head
    ln1 = model.norm(layer, "ln1")
    Q = fold_reader(model, ln1, model.W_Q(layer).to(dtype))
    K = fold_reader(model, ln1, model.W_K(layer).to(dtype)[kv])
    V = fold_reader(model, ln1, model.W_V(layer).to(dtype)[kv])
    O = model.W_O(layer).to(dtype)
    wq = _norm_weight(model, model.adapter.attn_part(layer, f.q_norm), Q)
    wk = _norm_weight(model, model.adapter.attn_part(layer, f.k_norm), K)
    wo = _norm_weight(model, model.norm(layer, "attn_post") if f.attn_post_norm else None, O)
    Q = Q if wq is None else Q * wq
    K = K if wk is None else K * wk
    O = O if wo is None else O * wo
    return HeadWeights(Q, K, V, O)


def embed(model: HookedModel, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[d_vocab, d_model]`` token embeddings times the embedding scale."""
    return model.W_E.to(dtype) * model.adapter.embed_scale


def unembed(model: HookedModel, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[d_model, d_vocab]`` unembedding with the final norm folded in."""
    return fold_reader(model, model.norm(None), model.W_U.to(dtype))


def _check_head(model: HookedModel, head: int) -> None:
    if not 0 <= head < model.cfg.n_heads:
        raise UncoverError(f"head {head} out of range; valid: 0 .. {model.cfg.n_heads - 1}")


def _check_basis(basis: str) -> None:
    if basis not in BASES:
        raise UncoverError(f"unknown basis {basis!r}; valid: {', '.join(BASES)}")


def ov_circuit(model: HookedModel, layer: int, head: int, basis: str = "vocab",
               dtype: torch.dtype = torch.float32) -> LowRank:
    """The OV circuit of head ``layer.head``: ``W_E W_V W_O W_U`` (``basis="vocab"``, ``[d_vocab, d_vocab]``:
    rows are attended-to tokens, columns output logits) or ``W_V W_O`` (``"resid"``, ``[d_model, d_model]``).

    >>> ov = ov_circuit(model, 3, 0)
    >>> ov.shape, ov.rank, round(ov.copying_score(), 2)  # L3H0 does not copy
    ((49152, 49152), 64, -0.53)
    """
    _check_head(model, head)
    _check_basis(basis)
    hw = head_weights(model, layer, dtype)
    if basis == "resid":
        return LowRank(hw.W_V[head], hw.W_O[head])
    return LowRank(embed(model, dtype) @ hw.W_V[head], hw.W_O[head] @ unembed(model, dtype))


def qk_circuit(model: HookedModel, layer: int, head: int, basis: str = "vocab",
               dtype: torch.dtype = torch.float32) -> LowRank:
    """The QK circuit of head ``layer.head``: ``W_E W_Q W_Kᵀ W_Eᵀ`` (``"vocab"``: rows are query tokens,
    columns key tokens) or ``W_Q W_Kᵀ`` (``"resid"``); attention scores before the ``1/√d_head`` scale.

    >>> [(q, k) for q, k, _ in qk_circuit(model, 3, 0).top_pairs(3, rows=[100, 200])]
    [(200, 2876), (200, 1836), (200, 10972)]
    """
    _check_head(model, head)
    _check_basis(basis)
    hw = head_weights(model, layer, dtype)
    if basis == "resid":
        return LowRank(hw.W_Q[head], hw.W_K[head].T)
    E = embed(model, dtype)
    return LowRank(E @ hw.W_Q[head], (E @ hw.W_K[head]).T)


def token_pairs(model: HookedModel, circuit: LowRank, k: int = 10, rows: Index = None, cols: Index = None,
                largest: bool = True) -> pd.DataFrame:
    """The ``k`` largest (or smallest) entries of a vocab-basis circuit, with their tokens.

    For a full OV circuit a row is the attended-to token and a column the promoted output
    token; for a QK circuit, query and key token. Without ``rows``/``cols`` the whole
    ``d_vocab²`` matrix is scanned in chunks (seconds on a CPU for a 50k vocabulary).

    >>> pairs = token_pairs(model, ov_circuit(model, 3, 0), 5, rows=model.to_tokens(" cat dog")[0])
    >>> list(pairs.columns), pairs.row_token[0]
    (['row', 'row_token', 'col', 'col_token', 'value'], ' cat')
    """
    out = []
    for r, col, v in circuit.top_pairs(k, rows, cols, largest=largest):
        out.append({"row": r, "row_token": model._strs([r])[0], "col": col, "col_token": model._strs([col])[0],
                    "value": v})
    return pd.DataFrame(out)
