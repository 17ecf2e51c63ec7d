"""Sequential layer-wise calibration, as in SparseGPT (Frantar & Alistarh 2023) and Wanda (Sun et al. 2023).

Calibration sequences (token blocks of the embedded corpus's *train* split, so perplexity is
measured on disjoint held-out documents) go through the model once. A forward pre-hook on
block ``l`` first runs the block on its input with pre-hooks on its linear layers that
accumulate input statistics (per-column squared norms for Wanda, ``XᵀX`` for SparseGPT), hands
them to the pruning method, and then lets the forward continue, so block ``l`` runs with its
pruned weights and block ``l + 1`` sees the output of the already-pruned layers ``< l + 1``. The
cost is two passes through the blocks, with no logits computed.

On a mixture of experts each expert's maps get statistics of the tokens routed to it only
(:mod:`uncover.pruning.experts`); an expert no calibration token reached is pruned by magnitude per
row (the Wanda score with equal input norms) and listed in the result's ``uncalibrated_experts``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from uncover.pruning.base import (
    Pruning,
    PruningError,
    Site,
    check_pattern_fits,
    edit_weights,
    linear_sites,
    measured_rows,
    remember,
    resolve_target,
    row_mask,
)
from uncover.pruning.experts import ExpertSite, calibration_hook

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

STATS = ("norm", "hessian")


@dataclass
class InputStats:
    """Statistics of the inputs ``X`` ``[tokens, d_in]`` seen by one linear layer."""

    kind: str
    """``norm`` (sum of squares per column, Wanda) or ``hessian`` (``XᵀX``, SparseGPT)."""
    n: int = 0
    """Tokens seen."""
    value: torch.Tensor | None = field(default=None, repr=False)
    """``[d_in]`` sums of squares or ``[d_in, d_in]`` ``XᵀX`` (float32, float64 for float64 models)."""

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs ``[..., d_in]``.

        >>> s = InputStats("norm"); s.add(torch.tensor([[3., 4.], [0., 0.]])); s.value, s.n
        (tensor([ 9., 16.]), 2)
        """
        x = x.detach().reshape(-1, x.shape[-1])
        x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        v = (x * x).sum(0) if self.kind == "norm" else x.T @ x
        self.value = v if self.value is None else self.value + v
        self.n += x.shape[0]

    @property
    def col_norm(self) -> torch.Tensor:
        """``‖X_j‖₂`` per input column ``[d_in]`` (``norm`` statistics)."""
        v = self.value if self.kind == "norm" else torch.diagonal(self.value)
        return v.clamp_min(0).sqrt()


BlockFn = Callable[[int, list[Site], dict[str, InputStats]], None]
"""``fn(layer, sites of that block, {site name: stats})``: prune the block's weights in place."""


def calibration_tokens(model: HookedModel, n_samples: int = 16, seq_len: int = 128, seed: int = 0) -> torch.Tensor:
    """``[n_samples, seq_len]`` token blocks drawn (seeded) from the corpus's train split.

    >>> calibration_tokens(model, 2, 16).shape
    torch.Size([2, 16])
    """
    from uncover.data.corpus import token_blocks

    if n_samples < 1 or seq_len < 2:
        raise PruningError(f"need n_samples >= 1 and seq_len >= 2, not {n_samples} and {seq_len}")
    blocks = token_blocks(model, block_len=seq_len, split="train")
    if len(blocks) < n_samples:
        raise PruningError(f"the corpus's train split has {len(blocks)} blocks of {seq_len} tokens, "
                           f"fewer than n_samples={n_samples}")
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[:n_samples]
    return blocks[order]


class _Stop(Exception):
    """Raised at the final norm: calibration needs no logits."""


def sequential(model: HookedModel, tokens: torch.Tensor, kind: str, fn: BlockFn) -> None:
    """Run ``tokens`` ``[batch, pos]`` through the model, calling ``fn`` for each block before it runs.

    Linears that read the same tensor (q/k/v, gate/up) share one :class:`InputStats`.

    >>> seen = []
    >>> sequential(model, calibration_tokens(model, 1, 8), "norm", lambda layer, sites, stats: seen.append(layer))
    >>> len(seen)
    30
    """
    if kind not in STATS:
        raise PruningError(f"unknown statistics {kind!r}; valid: {', '.join(STATS)}")
    by_layer: dict[int, list[Site]] = {}
    for s in linear_sites(model):
        by_layer.setdefault(s.layer, []).append(s)
    busy = [False]
    handles = []

    def block_hook(layer: int):
        def hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if busy[0]:
                return None
            busy[0] = True
            stats: dict[str, InputStats] = {}
            seen: list[tuple[torch.Tensor, InputStats]] = []  # keeps inputs alive so identity is safe
            inner = []

            def lin_hook(site: Site):
                def h(m: torch.nn.Module, inp: tuple) -> None:
                    x = inp[0]
                    st = next((s for t, s in seen if t is x), None)
                    if st is None:
                        st = InputStats(kind)
                        st.add(x)
                        seen.append((x, st))
                    stats[site.name] = st

                return h

            try:
                experts = [s for s in by_layer.get(layer, []) if isinstance(s, ExpertSite)]
                for s in by_layer.get(layer, []):
                    if not isinstance(s, ExpertSite):
                        inner.append(s.module.register_forward_pre_hook(lin_hook(s)))
                if experts:  # per expert: only the tokens routed to it
                    hook = calibration_hook(model, layer, experts, stats, lambda: InputStats(kind))
                    inner.append(experts[0].module.register_forward_pre_hook(hook))
                mod(*args, **kwargs)
                for h in inner:
                    h.remove()
                inner.clear()
                seen.clear()
                fn(layer, by_layer.get(layer, []), stats)
            finally:
                for h in inner:
                    h.remove()
                busy[0] = False
            return None

        return hook

    def stop(mod: torch.nn.Module, args: tuple) -> None:
        raise _Stop

    try:
        for i in range(model.cfg.n_layers):
            handles.append(model.adapter.block(i).register_forward_pre_hook(block_hook(i), with_kwargs=True))
        handles.append(model.adapter.final_norm().register_forward_pre_hook(stop))
        ids = tokens.to(model.device)
        with torch.no_grad():
            model.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()


WeightFn = Callable[[torch.Tensor, "InputStats | None", float, "tuple[int, int] | None"], torch.Tensor]
"""``fn(W [d_out, d_in], stats or None, sparsity, (N, M) or None) -> pruned W``."""


def prune_linears(
    model: HookedModel,
    method: str,
    sparsity: float | None,
    pattern: str | tuple[int, int] | None,
    weight_fn: WeightFn,
    *,
    stats: str | None = None,
    tokens: torch.Tensor | None = None,
    options: dict | None = None,
) -> Pruning:
    """Prune every block linear with ``weight_fn``; calibrated sequentially when ``stats`` is given.

    Arguments are checked before any weight changes; an error half-way restores the model.

    >>> from uncover.pruning.base import matrix_mask
    >>> def smallest_off(w, stats, sparsity, nm):  # weight_fn: the pruned weight (here: by magnitude)
    ...     return w.masked_fill(matrix_mask(w.abs(), sparsity), 0.0)
    >>> p = prune_linears(tiny("llama"), "mine", 0.5, None, smallest_off)  # a tiny random model
    >>> round(p.overall_sparsity(), 2)
    0.5
    >>> p.revert()
    """
    import time

    target, nm = resolve_target(sparsity, pattern)
    sites = linear_sites(model)
    check_pattern_fits(sites, nm)
    if stats is not None and (tokens is None or tokens.dim() != 2 or tokens.shape[0] < 1):
        raise PruningError("calibration tokens must be a LongTensor [n_samples, seq_len]")
    t0 = time.perf_counter()
    with edit_weights(model) as tx:

        idle: list[str] = []  # experts no calibration token reached

        def do(site: Site, st: InputStats | None) -> None:
            w = site.value(model).detach()
            if st is None and stats is not None:  # an expert without tokens: Wanda's score with equal input norms
                new = w.masked_fill(row_mask(w.abs(), target, nm), 0.0)
            else:
                new = weight_fn(w, st, target, nm)
            remember(tx, site)
            site.write(model, new)  # in place, or into accelerate's weights map when offloaded

        def block(layer: int, sites_l: list[Site], st: dict[str, InputStats]) -> None:
            for s in sites_l:
                if s.name in st:
                    do(s, st[s.name])
                elif isinstance(s, ExpertSite):
                    if s.part == "gate_proj":
                        idle.append(f"{layer}.{s.expert}")
                    do(s, None)
                else:
                    raise PruningError(f"block {layer}: {s.name} saw no input during calibration")

        if stats is None:
            for s in sites:
                do(s, None)
        else:
            sequential(model, tokens, stats, block)
        # the record is built inside the transaction: an interrupt before it exists still restores the model
        rows = measured_rows(sites, model)
        pat = None if nm is None else f"{nm[0]}:{nm[1]}"
        options = dict(options or {})
        if idle:
            options["uncalibrated_experts"] = idle  # "layer.expert"
        record = Pruning(method, target, pat, options, rows, time.perf_counter() - t0, model=model,
                         originals=tx.originals)
    return record
