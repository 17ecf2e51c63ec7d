"""The one activation harvesting engine: values at hook names over many inputs, stopping early.

Every dataset-scale reader (top-activating contexts, the tuned lens's residuals, probing
datasets, the SAE activation store, key statistics for editing) needs the same thing: run
batches of inputs, keep the values at a few hooks, reduce them over positions as soon as they
are computed (so memory never holds whole activations of many hooks), and never run the layers
after the last hook needed. :func:`capture` does one forward pass; :func:`harvest` streams
batches of token blocks or texts through it; :func:`hook_values` is its one-hook form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from uncover.core.errors import UsageError
from uncover.core.names import HookName

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel, Names
    from uncover.hooks.tokens import Batch

Weights = Callable[["Batch", slice], torch.Tensor]
"""``(batch, rows) -> [batch, pos]`` position weights of each input; ``rows`` are the inputs' indices."""
Reduce = Literal["none", "last", "mean"] | int | Weights


class _Stop(Exception):
    """Raised by a capture hook once every wanted value is in hand: the rest of the forward is skipped."""


def _early_stop_possible(names: Sequence[str]) -> bool:
    return not any(n == "logits" or n.endswith(".attn.hook_result") for n in names)


@torch.no_grad()
def capture(model: HookedModel, inputs: Any, names: Names, *, stop: bool = True,
            keep: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> tuple[Batch, dict[str, torch.Tensor]]:
    """One forward pass of ``inputs``; the values at ``names`` (detached, in the hook's layout).

    With ``stop`` (the default) the forward pass ends as soon as the last wanted hook has
    fired, so the later blocks never run (``logits`` and ``attn.hook_result`` need the full pass).
    ``keep(name, value)``: what to keep of each value (a reduction, a cast), applied as soon as
    the value is computed.

    >>> from uncover.hooks.harvest import capture
    >>> batch, got = capture(model, "The Eiffel Tower is in", ["blocks.2.hook_resid_post"])
    >>> got["blocks.2.hook_resid_post"].shape
    torch.Size([1, 6, 576])
    """
    wanted = model.select_names(names)
    batch = model.tokenize(inputs)
    if not stop or not _early_stop_possible(wanted):
        _, cache = model.run_with_cache(batch, wanted)
        return batch, {n: cache[n] if keep is None else keep(n, cache[n]) for n in wanted}
    got: dict[str, torch.Tensor] = {}
    left = set(wanted)

    def grab(name: str):
        def fn(v: torch.Tensor, hp: Any) -> None:
            got[name] = v.detach() if keep is None else keep(name, v.detach())
            left.discard(name)
            if not left:
                raise _Stop

        return fn

    with model.hooks([(n, grab(n)) for n in wanted]):
        try:
            model(batch)
        except _Stop:
            pass
    return batch, got


def _query_first(value: torch.Tensor, name: str) -> torch.Tensor:
    """Patterns and scores ``[batch, head, q, k]`` as ``[batch, q, head, k]``: positions on axis 1."""
    qk = HookName.parse(name).leaf in ("hook_pattern", "hook_attn_scores") if name else False
    return value.transpose(1, 2) if qk else value


def reduce_positions(value: torch.Tensor, batch: Batch, how: Reduce, name: str = "") -> torch.Tensor:
    """Reduce ``[batch, pos, ...]`` over real-token positions: ``none`` (keep), ``last``, ``mean`` or a position.

    Attention patterns and scores (``[batch, head, q, k]``) are reduced over query positions.

    >>> from uncover.hooks.tokens import Batch
    >>> b = Batch(torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]))
    >>> v = torch.arange(6.0).reshape(2, 3, 1)
    >>> reduce_positions(v, b, "last").flatten().tolist(), reduce_positions(v, b, "mean").flatten().tolist()
    ([2.0, 4.0], [1.0, 3.5])
    """
    if how == "none":
        return value
    v = _query_first(value, name)  # [batch, pos, ...]
    mask = batch.attention_mask.to(v.device)
    if how == "mean":
        w = mask.to(v.dtype).reshape(*mask.shape, *([1] * (v.dim() - 2)))
        return (v * w).sum(1) / w.sum(1).clamp_min(1)
    if how == "last":
        cols = batch.columns(-1)[:, 0]
    elif isinstance(how, int) and not isinstance(how, bool):
        cols = batch.columns(how)[:, 0]
        if bool((cols < 0).any()):
            raise UsageError(f"position {how} is beyond a prompt (real lengths {batch.lengths.tolist()})")
    else:
        raise UsageError(f"unknown position reduction {how!r}; valid: none, last, mean, a position or a function")
    return v[torch.arange(v.shape[0], device=v.device), cols.to(v.device)]


def weighted_positions(value: torch.Tensor, weights: torch.Tensor, name: str = "") -> torch.Tensor:
    """``sum_pos weights[b, pos] * value[b, pos, ...]`` in float32; positions without a positive weight never
    enter (not even as NaN). Patterns and scores are weighted over query positions.

    >>> v = torch.tensor([[[1.0], [float("nan")], [3.0]]])
    >>> weighted_positions(v, torch.tensor([[0.5, 0.0, 0.5]])).tolist()
    [[2.0]]
    """
    v = _query_first(value, name)
    w = weights.to(v.device, torch.float32).reshape(*weights.shape, *([1] * (v.dim() - 2)))
    return torch.where(w > 0, v.float() * w, 0.0).sum(1)


def harvest(
    model: HookedModel,
    inputs: torch.Tensor | Sequence[str],
    names: Names,
    *,
    batch_size: int = 8,
    reduce: Reduce = "none",
    dtype: torch.dtype | None = torch.float32,
    device: str | torch.device | None = "cpu",
    progress: Any = False,
    desc: str | None = None,
) -> Iterator[tuple[Batch, dict[str, torch.Tensor]]]:
    """Stream ``inputs`` (token blocks ``[n, pos]`` or texts) in batches; yield each batch and its values.

    Values are reduced over positions (``reduce``: see :func:`reduce_positions`, or a function
    ``(batch, rows) -> [batch, pos]`` of position weights for :func:`weighted_positions`, where
    ``rows`` is the slice of ``inputs`` in the batch), cast to ``dtype`` and moved to ``device``
    (``None`` keeps either), each as soon as it is computed. Each forward pass stops after the
    last hook needed. ``progress``: a :class:`~uncover.core.progress.Progress` or a bool (a tqdm
    bar on stderr, titled ``desc``).

    >>> from uncover.hooks.harvest import harvest
    >>> out = list(harvest(model, ["The Eiffel Tower", "The Colosseum is"], ["blocks.1.hook_mlp_out"], reduce="last"))
    >>> [v["blocks.1.hook_mlp_out"].shape for _, v in out]
    [torch.Size([2, 576])]
    """
    from uncover.core.progress import Progress

    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    wanted = model.select_names(names)
    prog = progress if isinstance(progress, Progress) else Progress(enabled=bool(progress))
    starts = range(0, len(inputs), batch_size)
    for i in prog.bar(starts, desc=desc or f"harvesting {len(wanted)} hook(s)"):
        chunk = inputs[i : i + batch_size]
        batch = model.tokenize(chunk if isinstance(chunk, torch.Tensor) else list(chunk))
        weights = reduce(batch, slice(i, i + len(chunk))) if callable(reduce) else None

        def keep(n: str, v: torch.Tensor, batch: Batch = batch, weights: torch.Tensor | None = weights) -> torch.Tensor:
            v = reduce_positions(v, batch, reduce, n) if weights is None else weighted_positions(v, weights, n)
            return v.to(device=device or v.device, dtype=dtype or v.dtype)

        yield capture(model, batch, wanted, keep=keep)


def hook_values(model: HookedModel, inputs: torch.Tensor | Sequence[str], hook: str, *, batch_size: int = 8,
                reduce: Reduce = "none", dtype: torch.dtype | None = torch.float32,
                device: str | torch.device | None = "cpu", progress: Any = False,
                desc: str | None = None) -> Iterator[torch.Tensor]:
    """The values at one ``hook`` for consecutive batches of ``inputs``, as :func:`harvest` computes them, with the
    axes after the positions flattened: ``[batch, pos, features]`` (``[batch, features]`` once reduced), so
    per-head values read as one vector per position.

    >>> blocks = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    >>> [v.shape for v in hook_values(model, blocks, "blocks.2.attn.hook_z", batch_size=2)]
    [torch.Size([2, 4, 576]), torch.Size([1, 4, 576])]
    """
    for _, got in harvest(model, inputs, [hook], batch_size=batch_size, reduce=reduce, dtype=dtype, device=device,
                          progress=progress, desc=desc):
        v = got[hook]
        yield v.reshape(v.shape[0], v.shape[1], -1) if reduce == "none" else v.reshape(v.shape[0], -1)
