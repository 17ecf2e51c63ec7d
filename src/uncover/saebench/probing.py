"""Sparse probing (SAEBench; Gurnee et al. 2023): can a few SAE latents classify a labelled set?

Each text's SAE latents are averaged over its tokens (the first, the attention sink, left out, as
in SAE training) — :func:`pooled_latents`. On a stratified train split, the ``k`` latents with the
largest difference of class means are kept and a logistic probe is fit on them alone; its accuracy
on the held-out split is the score (:func:`sparse_probe`). The same probe on all of the
(pooled) activations the SAE reads is the reference an SAE's few latents are compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from uncover.core.errors import UncoverError
from uncover.hooks.harvest import hook_values
from uncover.probing import fit_probe

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


@torch.no_grad()
def pooled_latents(model: HookedModel, sae: torch.nn.Module, texts: Sequence[str] | torch.Tensor,
                   batch_size: int = 8, skip_first: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents [n, d_sae], inputs [n, d_in])``: each text's SAE latents and SAE inputs, mean over its tokens.

    ``texts``: strings, or token ids ``[n, pos]`` (every position real). Positions before ``skip_first``
    are left out (a text shorter than that keeps its last token).

    >>> from uncover.sae import SAEConfig, TopKSAE
    >>> sae = TopKSAE(SAEConfig(d_in=576, d_sae=64, architecture="topk", k=4, hook_name="blocks.2.hook_resid_post"))
    >>> f, x = pooled_latents(model, sae, ["Hello there", "A much longer text"])
    >>> f.shape, x.shape
    (torch.Size([2, 64]), torch.Size([2, 576]))
    """
    if isinstance(texts, torch.Tensor):
        ids, mask = texts, torch.ones_like(texts)
    else:
        b = model.tokenize(list(texts))
        ids, mask = b.input_ids.cpu(), b.attention_mask.cpu()
    hook = sae.cfg.hook_name
    fs, xs = [], []
    for i, v in zip(range(0, len(ids), batch_size), hook_values(model, ids, hook, batch_size=batch_size)):
        m = mask[i : i + batch_size].float().clone()
        lengths = m.sum(1)
        m[:, :skip_first] = 0
        m[torch.arange(len(m)), (lengths - 1).long()] = 1  # the last token always counts
        w = (m / m.sum(1, keepdim=True))[..., None]
        fs.append((sae.encode(v).float() * w).sum(1))
        xs.append((v.float() * w).sum(1))
    return torch.cat(fs), torch.cat(xs)


def stratified_split(y: torch.Tensor, test_fraction: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, test)`` indices with each class split in the same proportion (at least one each side).

    >>> tr, te = stratified_split(torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1]))
    >>> len(tr), len(te), sorted(torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])[te].tolist())
    (7, 3, [0, 1, 1])
    """
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = min(max(1, round(test_fraction * len(idx))), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def top_latents(F: torch.Tensor, y: torch.Tensor, k: int) -> list[int]:
    """The ``k`` latents of ``F [n, d_sae]`` with the largest ``|mean(class 1) - mean(class 0)|``.

    >>> F = torch.tensor([[0.0, 1.0, 5.0], [0.0, 0.0, 5.0], [2.0, 1.0, 5.0], [2.0, 0.0, 5.0]])
    >>> top_latents(F, torch.tensor([0, 0, 1, 1]), 1)
    [0]
    """
    diff = (F[y == 1].float().mean(0) - F[y == 0].float().mean(0)).abs()
    return diff.topk(min(k, len(diff))).indices.tolist()


@dataclass
class SparseProbe:
    """A sparse probe's test accuracy and the latents it uses."""

    k: int
    accuracy: float
    latents: list[int]


def sparse_probe(F_train: torch.Tensor, y_train: torch.Tensor, F_test: torch.Tensor, y_test: torch.Tensor,
                 k: int) -> SparseProbe:
    """Fit a logistic probe on the top-``k`` latents (by class-mean difference on the train split); test accuracy.

    >>> g = torch.Generator().manual_seed(0)
    >>> F = torch.rand(40, 10, generator=g); y = torch.arange(40) % 2; F[:, 7] = 3.0 * y
    >>> p = sparse_probe(F[:30], y[:30], F[30:], y[30:], k=1)
    >>> p.latents, p.accuracy
    ([7], 1.0)
    """
    if len(y_train.unique()) < 2:
        raise UncoverError("sparse probing needs both classes in the train split")
    keep = top_latents(F_train, y_train, k)
    probe = fit_probe(F_train[:, keep], y_train)
    return SparseProbe(k, probe.score(F_test[:, keep], y_test), keep)
