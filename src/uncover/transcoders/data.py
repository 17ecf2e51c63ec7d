"""Training data of transcoders: MLP inputs and outputs of the same tokens, harvested in one pass.

:func:`harvest_pairs` keeps ``blocks.{l}.ln2.hook_normalized`` and ``blocks.{l}.hook_mlp_out``
of every chosen layer through the harvesting engine (the forward pass stops after the last
layer needed); :func:`pair_source` lays a layer's (or every layer's, for a CLT) pairs out as
the rows the SAE trainer's :class:`~uncover.sae.store.TensorSource` hands out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from uncover.hooks.harvest import harvest
from uncover.transcoders.base import mlp_in, mlp_out

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel
    from uncover.sae.store import TensorSource


def harvest_pairs(model: HookedModel, layers: Sequence[int], tokens: torch.Tensor, *, batch_size: int = 8,
                  skip_first: int = 1, progress: Any = False) -> tuple[torch.Tensor, torch.Tensor]:
    """MLP inputs ``[n_tokens, n_layers, d_model]`` and outputs ``[n_tokens, n_layers, d_model]`` of ``layers``.

    ``tokens``: blocks ``[n_blocks, pos]``; the first ``skip_first`` positions of each block are dropped
    (attention-sink outliers).

    >>> x, y = harvest_pairs(model, [0, 3], model.to_tokens(["The Eiffel Tower is in Paris"]))
    >>> tuple(x.shape), tuple(y.shape)
    ((6, 2, 576), (6, 2, 576))
    """
    names = [n for la in layers for n in (mlp_in(la), mlp_out(la))]
    xs, ys = [], []
    for _, got in harvest(model, tokens, names, batch_size=batch_size, progress=progress,
                          desc="harvesting MLP inputs and outputs"):
        xs.append(torch.stack([got[mlp_in(la)][:, skip_first:].flatten(0, 1) for la in layers], 1))
        ys.append(torch.stack([got[mlp_out(la)][:, skip_first:].flatten(0, 1) for la in layers], 1))
    return torch.cat(xs), torch.cat(ys)


def pair_source(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0,
                index: int | None = None) -> TensorSource:
    """Trainer batches of ``[x, y]`` rows: one layer's (``index``) or every layer's (a CLT's layout).

    >>> src = pair_source(torch.zeros(8, 2, 3), torch.ones(8, 2, 3), batch_size=4, index=1)
    >>> src.batch(0).shape
    torch.Size([4, 6])
    """
    from uncover.sae.store import TensorSource

    if index is not None:
        rows = torch.cat([x[:, index], y[:, index]], -1)
    else:
        rows = torch.cat([x.flatten(1), y.flatten(1)], -1)
    return TensorSource(rows, batch_size, seed=seed)
