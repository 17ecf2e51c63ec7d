"""Streaming top-k: the ``k`` largest activations of every unit over a corpus, in bounded memory.

Used by top-activating contexts of neurons and directions (:mod:`uncover.neurons.top`) and by SAE
feature dashboards (:mod:`uncover.sae.dashboard`). :class:`StreamingTopK` keeps a running
``[k, units]`` top-k (merged with each batch by one ``topk``), the activation window around each
kept position, and a uniform sample of all activations (bottom-``s`` of random keys) for
histograms, plus running counts for the firing density.
"""

from __future__ import annotations

import torch


class StreamingTopK:
    """Running top-``k`` positions per unit of ``[batch, pos, units]`` activations.

    Positions are numbered ``row * pos + p`` over all rows seen. ``window = (before, after)``
    keeps the unit's activations around each kept position (0 outside the row).

    >>> s = StreamingTopK(k=2, n_units=1)
    >>> s.update(torch.tensor([[[1.0], [5.0], [3.0]]]))
    >>> s.update(torch.tensor([[[4.0], [0.0], [2.0]]]))
    >>> s.values[:, 0].tolist(), s.index[:, 0].tolist()
    ([5.0, 4.0], [1, 3])
    """

    def __init__(self, k: int, n_units: int, window: tuple[int, int] = (0, 0), sample: int = 0, seed: int = 0):
        self.k, self.window, self.sample_size = k, window, sample
        w = window[0] + window[1] + 1
        self.values = torch.full((0, n_units), float("-inf"))
        self.index = torch.zeros((0, n_units), dtype=torch.long)
        self.windows = torch.zeros((0, n_units, w))
        self.sample = torch.zeros((0, n_units))
        self._keys = torch.zeros(0)
        self._gen = torch.Generator().manual_seed(seed)
        self.rows = 0
        self.count = 0
        self.positive = torch.zeros(n_units, dtype=torch.long)
        self.total = torch.zeros(n_units, dtype=torch.float64)

    def update(self, acts: torch.Tensor) -> None:
        """Merge one batch ``[batch, pos, units]`` (from any device: the running state lives on the CPU)."""
        acts = acts.detach().cpu()
        b, p, n = acts.shape
        flat = acts.reshape(b * p, n)
        ids = self.rows * p + torch.arange(b * p)
        cat_v = torch.cat([self.values, flat])
        top = cat_v.topk(min(self.k, len(cat_v)), dim=0)
        old = len(self.values)
        is_new = top.indices >= old
        new_i = (top.indices - old).clamp(min=0)  # [k, n] row of flat
        index = torch.where(is_new, ids[new_i], self.index.gather(0, top.indices.clamp(max=max(old - 1, 0)))
                            if old else ids[new_i])
        # activation windows of the newly kept positions, gathered from this batch
        before, after = self.window
        padded = torch.nn.functional.pad(acts, (0, 0, before, after))  # [b, p + w - 1, n]
        offs = torch.arange(before + after + 1)
        r, q = new_i // p, new_i % p
        units = torch.arange(n).expand_as(r)
        win_new = padded[r[..., None], q[..., None] + offs, units[..., None]]  # [k, n, w]
        if old:
            win_old = self.windows.gather(0, top.indices.clamp(max=old - 1)[..., None].expand(-1, -1, len(offs)))
            win_new = torch.where(is_new[..., None], win_new, win_old)
        self.values, self.index, self.windows = top.values, index, win_new
        self.rows += b
        self.count += b * p
        self.positive += (flat > 0).sum(0)
        self.total += flat.double().sum(0)
        if self.sample_size:
            keys = torch.rand(b * p, generator=self._gen)
            all_keys = torch.cat([self._keys, keys])
            keep = all_keys.topk(min(self.sample_size, len(all_keys)), largest=False).indices
            self.sample = torch.cat([self.sample, flat])[keep]
            self._keys = all_keys[keep]
