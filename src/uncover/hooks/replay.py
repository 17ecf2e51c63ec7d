"""Staged replay: run a model from a given layer onwards, starting from a residual stream.

Patching at layer ``l`` never changes layers before ``l``, so a patched run can start
from the cached residual at ``l``: :func:`capture_calls` records what every block was called
with (masks, rotary position embeddings, ...) on one forward pass, and :func:`run_from`
calls blocks ``l ..`` with those arguments on a batch of residual streams, then the
final norm and unembedding at the positions asked for. Hooks and interventions that
are active apply as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.hooks.decode import decode_resid

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel
    from uncover.hooks.tokens import Batch


@dataclass
class BlockCalls:
    """What each block received in one forward pass (hidden states removed)."""

    args: list[tuple]
    kwargs: list[dict[str, Any]]
    batch: Batch


def capture_calls(model: HookedModel, batch: Batch) -> tuple[torch.Tensor, BlockCalls]:
    """Forward ``batch`` once, recording every block's call arguments; returns logits and the calls.

    >>> logits, calls = capture_calls(model, model.tokenize("The Eiffel Tower is in"))
    >>> len(calls.args) == model.cfg.n_layers, logits.shape[1]
    (True, 6)
    """
    n = model.cfg.n_layers
    args: list[tuple] = [()] * n
    kwargs: list[dict[str, Any]] = [{}] * n
    handles = []

    def rec(i: int):
        def hook(module: torch.nn.Module, a: tuple, kw: dict) -> None:
            args[i] = a[1:]
            kwargs[i] = {k: v for k, v in kw.items() if k != "hidden_states"}

        return hook

    try:
        for i in range(n):
            handles.append(model.adapter.block(i).register_forward_pre_hook(rec(i), with_kwargs=True))
        with torch.no_grad():
            logits = model.model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
            ).logits
    finally:
        for h in handles:
            h.remove()
    return logits, BlockCalls(args, kwargs, batch)


def block_kwargs(calls: BlockCalls, layer: int, rows: int) -> dict[str, Any]:
    """Block ``layer``'s keyword arguments for ``rows`` batch rows: Bloom's ALiBi bias ``[batch * heads, 1, key]``
    of a one-row capture is repeated (the masks and rotary embeddings of other families broadcast as they are).

    >>> _, calls = capture_calls(model, model.tokenize("Hello world"))
    >>> block_kwargs(calls, 0, 3) is calls.kwargs[0]  # Llama: nothing depends on the batch
    True
    """
    kwargs = calls.kwargs[layer]
    alibi = kwargs.get("alibi")
    if alibi is None or rows == 1 or calls.batch.input_ids.shape[0] != 1:
        return kwargs
    return {**kwargs, "alibi": alibi.repeat(rows, 1, 1)}


def set_state(model: HookedModel, calls: BlockCalls, x: torch.Tensor) -> None:
    """Describe a replayed pass over ``x`` ``[batch, pos, d_model]`` to position-addressing hooks and
    interventions, as the root pre-hook of a whole forward pass would.

    >>> _, calls = capture_calls(model, model.tokenize("Hello world"))
    >>> set_state(model, calls, torch.zeros(3, 2, model.cfg.d_model)); model.state.batch
    3
    """
    st = model.state
    st.batch, st.q_len, st.offset = x.shape[0], x.shape[1], 0
    mask = calls.batch.attention_mask
    st.attention_mask = mask.expand(x.shape[0], -1) if mask.shape[0] == 1 else mask
    st.stash.clear()


def run_from(
    model: HookedModel, calls: BlockCalls, layer: int, resid: torch.Tensor, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits after running blocks ``layer ..`` on ``resid`` ``[batch, pos, d_model]``.

    ``calls`` must come from :func:`capture_calls` on a batch of one row (or of ``resid``'s batch size).
    ``positions``: ``[batch]`` columns whose logits to return (``[batch, d_vocab]``); ``None`` returns all
    positions ``[batch, pos, d_vocab]``.

    >>> batch = model.tokenize("The Eiffel Tower is in")
    >>> logits, calls = capture_calls(model, batch)
    >>> _, cache = model.run_with_cache(batch, ["blocks.20.hook_resid_pre"])
    >>> torch.allclose(run_from(model, calls, 20, cache["blocks.20.hook_resid_pre"]), logits, atol=1e-4)
    True
    """
    set_state(model, calls, resid)
    x = resid
    with torch.no_grad():
        for i in range(layer, model.cfg.n_layers):
            out = model.adapter.block(i)(x, *calls.args[i], **block_kwargs(calls, i, x.shape[0]))
            x = out[0] if isinstance(out, tuple) else out
        if positions is not None:
            x = x[torch.arange(x.shape[0], device=x.device), positions]
        return decode_resid(model, x)


def run_staged(
    model: HookedModel, calls: BlockCalls, stages: dict[int, torch.Tensor], position: int
) -> torch.Tensor:
    """One pass through the blocks where the rows of ``stages[l]`` join the batch at layer ``l``.

    ``stages`` maps a layer to residual streams ``[rows, pos, d_model]`` entering that layer; rows
    are appended in layer order, so row ``k`` of stage ``l`` is batch row ``offset(l) + k`` from
    layer ``l`` on (see :func:`stage_offsets`). Returns the logits at column ``position`` of every
    row, ``[total_rows, d_vocab]``, in the same order. Each block runs once, on all rows that have
    joined, instead of once per stage.

    >>> batch = model.tokenize("The Eiffel Tower is in")
    >>> logits, calls = capture_calls(model, batch)
    >>> _, cache = model.run_with_cache(batch, ["blocks.3.hook_resid_pre", "blocks.9.hook_resid_pre"])
    >>> stages = {3: cache["blocks.3.hook_resid_pre"], 9: cache["blocks.9.hook_resid_pre"]}
    >>> out = run_staged(model, calls, stages, position=-1)  # two rows, each the clean run
    >>> out.shape[0], torch.allclose(out, logits[:, -1].expand(2, -1), atol=1e-4)
    (2, True)
    """
    x = run_staged_resid(model, calls, stages, model.cfg.n_layers)
    with torch.no_grad():
        return decode_resid(model, x[:, position])


def run_staged_resid(
    model: HookedModel, calls: BlockCalls, stages: dict[int, torch.Tensor], stop: int
) -> torch.Tensor:
    """Like :func:`run_staged`, but stop before block ``stop`` and return the residual ``[rows, pos, d_model]``.

    Stages at layers ``>= stop`` are appended unchanged (they have not run any block).

    >>> batch = model.tokenize("The Eiffel Tower is in")
    >>> _, calls = capture_calls(model, batch)
    >>> _, cache = model.run_with_cache(batch, ["blocks.3.hook_resid_pre", "blocks.5.hook_resid_pre"])
    >>> x = run_staged_resid(model, calls, {3: cache["blocks.3.hook_resid_pre"]}, stop=5)
    >>> torch.allclose(x, cache["blocks.5.hook_resid_pre"], atol=1e-5)
    True
    """
    layers = sorted(stages)
    x: torch.Tensor | None = None
    with torch.no_grad():
        for i in range(layers[0], stop):
            if i in stages:
                x = stages[i] if x is None else torch.cat([x, stages[i]])
            set_state(model, calls, x)
            out = model.adapter.block(i)(x, *calls.args[i], **block_kwargs(calls, i, x.shape[0]))
            x = out[0] if isinstance(out, tuple) else out
        late = [stages[i] for i in layers if i >= stop]
        return torch.cat(([x] if x is not None else []) + late)


def stage_offsets(stages: dict[int, int]) -> dict[int, int]:
    """First batch row of each stage, given the number of rows per stage.

    >>> stage_offsets({0: 3, 2: 2, 5: 4})
    {0: 0, 2: 3, 5: 5}
    """
    out, total = {}, 0
    for layer in sorted(stages):
        out[layer] = total
        total += stages[layer]
    return out
