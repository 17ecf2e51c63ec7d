"""Training a tuned lens (Belrose et al. 2023): a closed-form fit, then Adam on the paper's KL objective.

The paper trains from the identity with SGD + Nesterov, 250 steps of 2^18 tokens. On a
CPU the cost is the full-vocabulary softmax (``n_layers × positions × d_model × d_vocab``
per step), so :func:`train_tuned_lens` first solves for each translator in closed form:
a ridge least-squares fit of the final residual's direction from the layer's residual
(both divided by their RMS, since the final norm ignores scale; ridge towards the
identity). That fit alone removes most of the logit lens's KL in a second or two; a few
dozen Adam steps on the paper's KL objective then refine it. ``init="identity"`` (with
more steps and a larger learning rate) trains on the KL alone, as in the paper. The lens
itself is :class:`uncover.lenses.tuned_lens.TunedLens`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from uncover.core.diverge import check_finite, check_improved
from uncover.core.errors import UncoverError
from uncover.core.names import act_name
from uncover.hooks.decode import decode_resid
from uncover.hooks.harvest import harvest
from uncover.lenses.tuned_lens import TunedLens

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


INITS = ("lstsq", "identity")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train_tuned_lens` (defaults: a useful lens in a minute or two on two CPU cores)."""

    steps: int = 30
    """Adam steps on the KL objective after the initial fit (0: the fit alone)."""
    lr: float = 1e-4
    """Adam learning rate, cosine-decayed to zero (about 2e-3 suits ``init="identity"``)."""
    batch_size: int = 8
    """Token positions per step; every layer's translator sees the same positions."""
    init: str = "lstsq"
    """``lstsq``: start from the closed-form ridge fit; ``identity``: from the identity, as in the paper."""
    ridge: float = 1e-2
    """Ridge penalty of the fit, relative to the mean diagonal of the Gram matrix."""
    n_blocks: int = 32
    """Corpus blocks whose residuals are collected (when ``blocks`` is not given)."""
    block_len: int = 64
    """Tokens per corpus block (when ``blocks`` is not given)."""
    seed: int = 0
    """Seed of the position sampling and of the choice of corpus blocks."""

    def __post_init__(self) -> None:
        for name, low in (("steps", 0), ("batch_size", 1), ("n_blocks", 1), ("block_len", 1)):
            if getattr(self, name) < low:
                raise UncoverError(f"TrainConfig.{name} must be >= {low}, not {getattr(self, name)}")
        for name in ("lr", "ridge"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise UncoverError(f"TrainConfig.{name} must be a positive number, not {v}")
        if self.init not in INITS:
            raise UncoverError(f"TrainConfig.init must be one of {', '.join(INITS)}, not {self.init!r}")


def collect_resid(model: HookedModel, blocks: torch.Tensor, chunk: int = 8, progress: bool = False) -> torch.Tensor:
    """Residual before every layer and the final one, ``[n_layers + 1, n_blocks * block_len, d_model]``.

    Row ``l < n_layers`` is ``blocks.{l}.hook_resid_pre``; row ``n_layers`` is the final
    residual. Float32 on the CPU, whatever the model's dtype and device. Collected by the
    harvesting engine (the final norm and unembedding never run). When every block starts with
    the tokenizer's BOS (:func:`uncover.data.corpus.token_blocks` puts it there), the BOS
    positions are left out: their residuals are attention-sink outliers, not text.

    >>> collect_resid(model, torch.tensor([[1, 2, 3]])).shape
    torch.Size([31, 3, 576])
    """
    if not isinstance(blocks, torch.Tensor) or blocks.dim() != 2 or blocks.dtype not in (torch.int64, torch.int32):
        got = f"{blocks.dtype} {tuple(blocks.shape)}" if isinstance(blocks, torch.Tensor) else type(blocks).__name__
        raise UncoverError(f"blocks must be token ids, a LongTensor [n_blocks, block_len]; got {got}")
    from uncover.data.corpus import prefix_len

    n = model.cfg.n_layers
    skip = prefix_len(model, blocks) if model.tokenizer is not None else 0  # a leading BOS: an outlier, no text
    names = [act_name("resid_pre", i) for i in range(n)] + [act_name("resid_post", n - 1)]
    parts = [torch.stack([got[name][:, skip:] for name in names]).flatten(1, 2)  # [layer + 1, tokens, d_model]
             for _, got in harvest(model, blocks, names, batch_size=chunk, progress=progress, desc="residuals")]
    return torch.cat(parts, dim=1)


def _layer_kl(model: HookedModel, resid: torch.Tensor, lens: TunedLens | None) -> torch.Tensor:
    """KL(final ‖ lens) per layer and position for ``resid [n_layers + 1, pos, d_model]`` → ``[n_layers, pos]``."""
    n = resid.shape[0] - 1
    dev = model.device
    with torch.no_grad():
        target = torch.log_softmax(decode_resid(model, resid[n].to(dev)).float(), -1)  # [pos, vocab]
    h = resid[:n].to(dev)
    if lens is not None:
        h = torch.stack([lens.translate(layer, h[layer]) for layer in range(n)])
    logq = torch.log_softmax(decode_resid(model, h).float(), -1)  # [layer, pos, vocab]
    return (target.exp() * (target - logq)).sum(-1)


def _fit_lstsq(lens: TunedLens, resid: torch.Tensor, ridge: float) -> None:
    """Set each translator to the ridge least-squares map from ``h_l`` to the final residual's direction.

    Scale-free: ``h_l`` and the final residual are divided by their RMS (the final norm
    ignores scale), so that the fit is not dominated by a few positions of huge norm. The
    bias feature is ``1 / rms(h_l)``, which keeps ``h ↦ h + A h + b`` exact. The features are
    RMS-normalised, so float32 products are accurate; the solve is in float64.
    """
    n = lens.n_layers

    def rms(x: torch.Tensor) -> torch.Tensor:
        return x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)

    target = resid[n] / rms(resid[n])
    eye = torch.eye(lens.d_model + 1, dtype=torch.float64)
    for layer in range(n):
        h = resid[layer]
        r = rms(h)
        feats = torch.cat([h / r, 1 / r], dim=-1)  # [pos, d_model + 1]
        gram = (feats.T @ feats).double()
        gram += ridge * gram.diagonal().mean() * eye
        sol = torch.linalg.solve(gram, (feats.T @ (target - h / r)).double())  # [d_model + 1, d_model]
        t = lens.translators[layer]
        with torch.no_grad():
            t.weight.copy_(sol[:-1].T)
            t.bias.copy_(sol[-1])


def lens_kl(
    model: HookedModel, blocks: torch.Tensor, lens: TunedLens | None = None, *, chunk: int = 32
) -> torch.Tensor:
    """Mean KL(final ‖ lens) in nats at each layer boundary ``0 .. n_layers - 1`` over all positions of ``blocks``.

    ``lens=None`` measures the logit lens. Use held-out blocks to compare lenses fairly.

    >>> from uncover.data.corpus import token_blocks
    >>> held = token_blocks(model, block_len=16, split="heldout")[:1]
    >>> identity = TunedLens.for_model(model)  # an untrained lens is the logit lens
    >>> torch.allclose(lens_kl(model, held), lens_kl(model, held, identity))
    True
    """
    if lens is not None:
        lens.check(model)
    resid = collect_resid(model, blocks)
    total = torch.zeros(resid.shape[0] - 1, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, resid.shape[1], chunk):
            total += _layer_kl(model, resid[:, i : i + chunk], lens).sum(-1).double().cpu()
    return (total / resid.shape[1]).float()


def train_tuned_lens(
    model: HookedModel,
    blocks: torch.Tensor | None = None,
    *,
    steps: int = TrainConfig.steps,
    lr: float = TrainConfig.lr,
    batch_size: int = TrainConfig.batch_size,
    init: str = TrainConfig.init,
    ridge: float = TrainConfig.ridge,
    n_blocks: int = TrainConfig.n_blocks,
    block_len: int = TrainConfig.block_len,
    seed: int = TrainConfig.seed,
    progress: bool = True,
) -> TunedLens:
    """Train a tuned lens for ``model`` (which stays frozen and unchanged). Settings: :class:`TrainConfig`.

    ``blocks``: token ids ``[n_blocks, block_len]``; default: ``n_blocks`` random blocks of
    ``block_len`` tokens from the train split of the embedded corpus. The residuals of all
    blocks are collected once; the translators start from the closed-form fit (or the
    identity), then each of ``steps`` Adam steps samples ``batch_size`` positions and lowers
    the sum over layers of the mean KL(final output ‖ translated lens output). tqdm bars on
    stderr show the progress (``progress=False`` hides them). The settings and the KL on
    the training positions before and after (``kl_before``, ``kl_after``: means over
    layers) are kept in ``lens.info`` and saved with the lens.

    >>> lens = train_tuned_lens(model)  # doctest: +SKIP
    >>> lens.info["kl_after"] < lens.info["kl_before"]  # doctest: +SKIP
    True
    """
    from tqdm.auto import tqdm

    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, init=init, ridge=ridge, n_blocks=n_blocks,
                      block_len=block_len, seed=seed)
    if blocks is None:
        from uncover.data.corpus import token_blocks

        blocks = token_blocks(model, block_len=cfg.block_len, split="train")
        pick = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.n_blocks]
        blocks = blocks[pick.sort().values]
    resid = collect_resid(model, blocks, progress=progress)  # [layer + 1, tokens, d_model]
    gen = torch.Generator().manual_seed(cfg.seed)
    probe = torch.randperm(resid.shape[1], generator=gen)[:64]  # training positions on which to report the KL

    def probe_kl() -> float:
        with torch.no_grad():
            return float(_layer_kl(model, resid[:, probe], lens).mean())

    lens = TunedLens.for_model(model)
    kl_before = probe_kl()
    if cfg.init == "lstsq":
        _fit_lstsq(lens, resid, cfg.ridge)
    params = list(lens.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(cfg.steps, 1))))
    bar = tqdm(range(cfg.steps), desc="tuned lens", disable=not progress, leave=False)
    try:
        for step in bar:
            idx = torch.randint(resid.shape[1], (cfg.batch_size,), generator=gen)
            kl = _layer_kl(model, resid[:, idx], lens).mean(-1)  # [layer]
            check_finite(step, loss=kl, lr=cfg.lr, what="tuned lens training")
            # gradients for the lens only: the model's parameters get no .grad and are never updated
            grads = torch.autograd.grad(kl.sum(), params)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            sched.step()
            bar.set_postfix(kl=f"{kl.detach().mean():.3f}")
    finally:  # before an error is printed, so that it gets a line of its own
        bar.close()
    check_finite(cfg.steps, params=params, lr=cfg.lr, what="tuned lens training")
    kl_after = probe_kl()
    # the lens feeds the final norm, so a step far too large leaves the KL finite but worse than the logit lens
    check_improved(kl_before, kl_after, lr=cfg.lr, what="tuned lens training")
    lens.info = {"train": asdict(cfg), "tokens": int(resid.shape[1]), "kl_before": kl_before,
                 "kl_after": kl_after}
    return lens
