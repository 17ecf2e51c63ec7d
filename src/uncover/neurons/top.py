"""Top-activating contexts of MLP neurons or residual directions, streamed over a corpus.

The classic first look at a unit (Olah et al. 2017; Geva et al. 2021 "Transformer
feed-forward layers are key-value memories" read the keys this way): run a corpus through
the model and keep, for every unit, the ``k`` token positions where it fires most.
The corpus is streamed by the harvesting engine (:func:`uncover.hooks.harvest.hook_values`,
which stops each forward pass after the hook) into a
:class:`~uncover.hooks.streaming.StreamingTopK`, so memory stays bounded for any corpus size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from uncover.core.errors import UncoverError
from uncover.core.names import HookName, act_name, neuron_label
from uncover.hooks.contexts import TopActivations
from uncover.hooks.harvest import hook_values
from uncover.hooks.streaming import StreamingTopK

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def resolve_hook(hook: str | int) -> str:
    """An int ``l`` means ``blocks.{l}.mlp.hook_post`` (the neurons of layer ``l``).

    >>> resolve_hook(3), resolve_hook("blocks.2.hook_resid_post")
    ('blocks.3.mlp.hook_post', 'blocks.2.hook_resid_post')
    """
    return act_name("post", hook) if isinstance(hook, int) else hook


def top_activations(
    model: HookedModel,
    hook: str | int,
    units: Sequence[int] | None = None,
    *,
    direction: torch.Tensor | None = None,
    texts: Sequence[str] | None = None,
    tokens: torch.Tensor | None = None,
    k: int = 10,
    block_len: int = 64,
    max_blocks: int | None = 256,
    batch_size: int = 8,
    window: tuple[int, int] = (12, 4),
    sample: int = 4096,
    seed: int = 0,
) -> TopActivations:
    """The ``k`` top-activating token positions of each unit, streamed over a corpus.

    ``hook``: a hook name, or an int ``l`` for the MLP neurons ``blocks.{l}.mlp.hook_post``.
    ``units``: indices into the hook's last axis (default: all), or ``direction``: a
    ``[d]`` or ``[n_dirs, d]`` tensor read off by dot product (e.g. a residual direction).
    The corpus is ``tokens`` (``[n_blocks, pos]``), else ``texts``, else the embedded
    corpus, cut into ``block_len`` blocks (first ``max_blocks``; ``None`` for all).

    >>> r = top_activations(model, 10, units=[5, 7], k=5, max_blocks=8)
    >>> r.values.shape
    torch.Size([2, 5])
    """
    from uncover.data.corpus import token_blocks

    hook = resolve_hook(hook)
    model.site(hook)
    if k < 1:
        raise UncoverError(f"k must be positive, not {k}")
    if tokens is None:
        tokens = token_blocks(model, texts, block_len=block_len)
    if max_blocks is not None:
        tokens = tokens[:max_blocks]
    d = None
    if direction is not None:
        d = direction.float().reshape(-1, direction.shape[-1]).T.contiguous()  # [d, n_dirs]
        labels = [f"dir{i}" for i in range(d.shape[1])]
    stream = None
    for acts in hook_values(model, tokens, hook, batch_size=batch_size):
        if d is not None:
            if acts.shape[-1] != d.shape[0]:
                raise UncoverError(f"direction has {d.shape[0]} dims but {hook} has {acts.shape[-1]}")
            acts = acts @ d
        elif units is not None:
            bad = [u for u in units if not -acts.shape[-1] <= u < acts.shape[-1]]
            if bad:
                raise UncoverError(f"unit(s) {bad} out of range; {hook} has {acts.shape[-1]} (0..{acts.shape[-1] - 1})")
            acts = acts[..., list(units)]
        if stream is None:
            stream = StreamingTopK(k, acts.shape[-1], window, sample, seed)
        stream.update(acts)
    assert stream is not None
    if d is None:
        name = HookName.parse(hook)
        unit_ids = units if units is not None else range(stream.values.shape[1])
        labels = [neuron_label(name.layer, u) if name.point == "mlp.hook_post" else f"u{u}" for u in unit_ids]
    return TopActivations.from_stream(model, stream, hook, labels, tokens)
