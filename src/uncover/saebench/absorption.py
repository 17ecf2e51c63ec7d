"""Feature absorption on a first-letter task (Chanin et al. 2024, "A is for Absorption"; SAEBench), simplified.

The task is built from the tokenizer's vocabulary (:func:`first_letter_words`): single tokens that are a
space and a lowercase word of at least three letters, each read after a fixed prefix at the SAE's hook.
For each letter ``L`` with enough words:

1. a logistic probe on the SAE's inputs (train split) for "starts with L" gives the ground-truth
   direction ``p`` (unit length). It is fit on the raw inputs (centred and scaled by one global
   scale, :func:`letter_probe`), not per-feature standardised ones, whose direction would weigh
   low-variance coordinates up;
2. the *main* latents of ``L`` are the ``k_main`` latents with the largest class-mean difference on the
   train split (SAEBench picks them by k-sparse probing; here ``k_main`` is fixed);
3. on test words of ``L`` that the probe classifies correctly, a *false negative* is one where no main
   latent fires; it is *absorbed* when the active latent with the largest contribution
   ``c_j = f_j (W_dec[j] . p)`` to the probe direction is not a main latent, has cosine
   ``>= cos_min`` with ``p``, and contributes at least ``fraction`` of the word's probe projection
   ``(x - mean) . p`` (the mean over the train split), so that one latent carries the letter instead
   (SAEBench's full absorption, with one absorbing latent).

The absorption rate of ``L`` is absorbed / probe-correct test words; :class:`Absorption` averages it
over letters. Not done here: SAEBench's partial-absorption fraction and its choice of ``k_main``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.diverge import check_finite
from uncover.core.errors import UncoverError
from uncover.core.threads import torch_threads
from uncover.hooks.harvest import hook_values
from uncover.saebench.probing import stratified_split, top_latents

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

WORD = re.compile(r" [a-z]{3,}")


def first_letter_words(tokenizer: Any, per_letter: int = 40, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(token ids, letter index 0..25)``: up to ``per_letter`` vocabulary tokens per first letter, seeded.

    >>> ids, letters = first_letter_words(model.tokenizer, per_letter=2)
    >>> len(ids), sorted(set(letters)) == list(range(26))
    (52, True)
    """
    by: dict[int, list[int]] = {i: [] for i in range(26)}
    for tid in range(len(tokenizer)):
        text = tokenizer.decode([tid])
        if WORD.fullmatch(text):
            by[ord(text[1]) - ord("a")].append(tid)
    g = torch.Generator().manual_seed(seed)
    ids, letters = [], []
    for letter, toks in by.items():
        pick = [toks[int(i)] for i in torch.randperm(len(toks), generator=g)[:per_letter]]
        ids += sorted(pick)
        letters += [letter] * len(pick)
    return ids, letters


@torch.no_grad()
def word_inputs(model: HookedModel, hook: str, ids: list[int], prefix: str = " Word:",
                batch_size: int = 64) -> torch.Tensor:
    """``[n, d_in]``: the activations at ``hook`` on each word token, read after the tokens of ``prefix``."""
    pre = model.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    toks = torch.tensor([[*pre, i] for i in ids], dtype=torch.long)
    return torch.cat([v[:, -1] for v in hook_values(model, toks, hook, batch_size=batch_size)])


def letter_probe(X: torch.Tensor, y: torch.Tensor, l2: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w [d], b)``: binary logistic regression on ``X [n, d]`` with labels ``y [n]``, fit by L-BFGS.

    ``X`` is centred on its mean and divided by its overall standard deviation (one number), so the
    weights stay a direction of the raw space; ``w`` and ``b`` apply to raw ``X``: ``logit = X @ w + b``.

    >>> X = torch.tensor([[0.0, 1.0], [0.0, -1.0], [2.0, 1.0], [2.0, -1.0]]); y = torch.tensor([0, 0, 1, 1])
    >>> w, b = letter_probe(X, y)
    >>> ((X @ w + b > 0).long() == y).all().item(), bool(w[0] > 10 * w[1].abs())
    (True, True)
    """
    X = X.float()
    mu, scale = X.mean(0), X.std().clamp_min(1e-12)
    Z = (X - mu) / scale
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")
    target = y.float()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Z @ w + b, target) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), torch_threads(1):
        opt.step(closure)
    check_finite(0, params=[w, b], what="absorption probe training", fix="check the activations are finite")
    w_raw = w.detach() / scale
    return w_raw, b.detach() - mu @ w_raw


@dataclass
class LetterAbsorption:
    """One letter's counts on the test split (see the module docstring)."""

    letter: str
    main: list[int]
    probe_correct: int
    false_negatives: int
    absorbed: int
    absorbing: list[int]

    @property
    def rate(self) -> float:
        return self.absorbed / self.probe_correct if self.probe_correct else 0.0


@dataclass
class Absorption:
    """Absorption per letter and its mean over letters.

    Attributes:
        letters: one :class:`LetterAbsorption` per letter scored.
        rate: mean absorption rate over letters. false_negative_rate: mean share of probe-correct
            test words where no main latent fires.
        probe_accuracy: mean test accuracy of the letter probes.
    """

    letters: list[LetterAbsorption]
    rate: float
    false_negative_rate: float
    probe_accuracy: float


def absorption(X: torch.Tensor, F: torch.Tensor, W_dec: torch.Tensor, letters: torch.Tensor, *, k_main: int = 1,
               cos_min: float = 0.025, fraction: float = 0.4, min_words: int = 10, test_fraction: float = 0.3,
               seed: int = 0) -> Absorption:
    """Absorption from SAE inputs ``X [n, d_in]``, latents ``F [n, d_sae]``, ``W_dec [d_sae, d_in]`` and labels ``[n]``.

    Letters with fewer than ``min_words`` words are skipped.
    """
    X, F, W = X.float(), F.float(), W_dec.float()
    tr, te = stratified_split(letters, test_fraction, seed)
    mean = X[tr].mean(0)
    cos_all = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out: list[LetterAbsorption] = []
    accs = []
    for c in letters.unique().tolist():
        if int((letters == c).sum()) < min_words:
            continue
        y = (letters == c).long()
        w, b = letter_probe(X[tr], y[tr])
        said = (X[te] @ w + b > 0).long()
        accs.append(float((said == y[te]).float().mean()))
        p = w / w.norm().clamp_min(1e-12)
        main = top_latents(F[tr], y[tr], k_main)
        pos = te[(y[te] == 1) & (said == 1)]
        fn = pos[(F[pos][:, main] <= 0).all(1)]
        contrib = F[fn] * (W @ p)  # [n_fn, d_sae]
        top = contrib.argmax(1)
        proj = (X[fn] - mean) @ p
        cos = cos_all[top] @ p
        best = contrib.gather(1, top[:, None]).squeeze(1)
        is_main = torch.tensor([int(t) in main for t in top], dtype=torch.bool)
        ok = (~is_main) & (cos >= cos_min) & (proj > 0) & (best >= fraction * proj) & (F[fn].gather(1, top[:, None])
                                                                                        .squeeze(1) > 0)
        out.append(LetterAbsorption(string.ascii_lowercase[c], main, len(pos), len(fn), int(ok.sum()),
                                    sorted({int(t) for t in top[ok]})))
    if not out:
        raise UncoverError(f"no letter has {min_words} words; lower min_words or take more words per letter")
    n = len(out)
    return Absorption(out, sum(a.rate for a in out) / n,
                      sum(a.false_negatives / a.probe_correct if a.probe_correct else 0.0 for a in out) / n,
                      sum(accs) / len(accs))
