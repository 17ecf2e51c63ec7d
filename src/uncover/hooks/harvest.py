"""The one activation harvesting engine: values at hook names over many inputs, stopping early.

Every dataset-scale reader (top-activating contexts, the tuned lens's residuals, probing
datasets, the SAE activation store, key statistics for editing) needs the same thing: run
batches of inputs, keep the values at a few hooks, reduce them over positions, and never run
the layers after the last hook needed. :func:`capture` does one forward pass;
:func:`harvest` streams batches of token blocks or texts through it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from uncover.core.errors import UsageError
from uncover.core.names import HookName

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel, Names
    from uncover.hooks.tokens import Batch

Reduce = Literal["none", "last", "mean"] | int


class _Stop(Exception):
    """Raised by a capture hook once every wanted value is in hand: the rest of the forward is skipped."""


def _early_stop_possible(names: Sequence[str]) -> bool:
    return not any(n == "logits" or n.endswith(".attn.hook_result") for n in names)


@torch.no_grad()
def capture(model: HookedModel, inputs: Any, names: Names, *,
            stop: bool = True) -> tuple[Batch, dict[str, torch.Tensor]]:
    """One forward pass of ``inputs``; the values at ``names`` (detached, in the hook's layout).

    With ``stop`` (the default) the forward pass ends as soon as the last wanted hook has
    fired, so the later blocks never run (``logits`` and ``attn.hook_result`` need the full pass).

    >>> from uncover.hooks.harvest import capture
    >>> batch, got = capture(model, "The Eiffel Tower is in", ["blocks.2.hook_resid_post"])
    >>> got["blocks.2.hook_resid_post"].shape
    torch.Size([1, 6, 576])
    """
    wanted = model.select_names(names)
    batch = model.tokenize(inputs)
    if not stop or not _early_stop_possible(wanted):
        _, cache = model.run_with_cache(batch, wanted)
        return batch, {n: cache[n] for n in wanted}
    got: dict[str, torch.Tensor] = {}
    left = set(wanted)

    def grab(name: str):
        def fn(v: torch.Tensor, hp: Any) -> None:
            got[name] = v.detach()
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
    qk = HookName.parse(name).leaf in ("hook_pattern", "hook_attn_scores") if name else False
    v = value.transpose(1, 2) if qk else value  # [batch, pos, ...]
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
        raise UsageError(f"unknown position reduction {how!r}; valid: none, last, mean or a position")
    return v[torch.arange(v.shape[0], device=v.device), cols.to(v.device)]


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
) -> Iterator[tuple[Batch, dict[str, torch.Tensor]]]:
    """Stream ``inputs`` (token blocks ``[n, pos]`` or texts) in batches; yield each batch and its values.

    Values are reduced over positions (``reduce``), cast to ``dtype`` and moved to ``device``
    (``None`` keeps either). Each forward pass stops after the last hook needed. ``progress``:
    a :class:`~uncover.core.progress.Progress` or a bool (a tqdm bar on stderr).

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
    for i in prog.bar(starts, desc=f"harvesting {len(wanted)} hook(s)"):
        chunk = inputs[i : i + batch_size]
        batch, got = capture(model, chunk if isinstance(chunk, torch.Tensor) else list(chunk), wanted)
        out = {}
        for n in wanted:
            v = reduce_positions(got[n], batch, reduce, n)
            out[n] = v.to(device=device or v.device, dtype=dtype or v.dtype)
        yield batch, out
