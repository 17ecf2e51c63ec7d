"""The SAE latents active on each token of a prompt (the features view), and the check that an SAE fits the model.

Steering or ablating one latent is the registered operation ``sae steer`` (:mod:`uncover.sae.steer_latent`);
the page runs it as a job like any other operation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UsageError
from uncover.serve.common import prompt_ids, token_strs

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def check_sae(model: HookedModel, sae: Any) -> Any:
    """``sae`` if its hook exists in ``model`` with the SAE's input width (else a ``UsageError``)."""
    from uncover.core.errors import UncoverError

    hook = sae.cfg.hook_name
    try:
        model.site(hook)
    except UncoverError as e:
        raise UsageError(f"the SAE reads {hook!r}, which this model lacks ({e})") from None
    _, cache = model.run_with_cache(model.to_tokens("a")[:, :1], names=[hook])
    width = cache[hook][0, 0].numel()
    if width != sae.cfg.d_in:
        raise UsageError(
            f"the SAE reads {sae.cfg.d_in}-wide activations at {hook}, but this model's are {width} "
            "wide: it was trained on another model"
        )
    return sae


def features_view(model: HookedModel, sae: Any, prompt: str, k: int = 5) -> dict[str, Any]:
    """The SAE latents active on each token of ``prompt``: ``[pos]`` lists of ``[latent, activation]``.

    The activation at the SAE's hook is encoded by the SAE (``sae.encode``: ``[pos, d_sae]``); each position
    lists its ``k`` strongest active latents; ``top`` lists the latents with the largest activation anywhere
    in the prompt (``[latent, max activation, position]``), strongest first. The first position (often a BOS
    token with an outsized norm, skipped when SAEs are trained) is listed but left out of ``top``.

    >>> v = features_view(model, sae, "The Eiffel Tower is in the city of", k=3)
    >>> len(v["latents"]) == len(v["tokens"]), len(v["latents"][1]) <= 3, v["hook"]
    (True, True, 'blocks.15.hook_resid_post')
    """
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 50:
        raise UsageError(f"k must be an integer 1..50, got {k!r}")
    ids = prompt_ids(model, prompt)
    hook = sae.cfg.hook_name
    with torch.no_grad():
        _, cache = model.run_with_cache(ids[None], names=[hook])
        f = sae.encode(cache[hook][0]).float()  # [pos, d_sae]
    per_pos = []
    for row in f:
        v, i = row.topk(min(k, row.numel()))
        per_pos.append([[int(j), round(float(a), 4)] for a, j in zip(v, i) if float(a) > 0])
    rest = f[1:] if f.shape[0] > 1 else f
    best, where = rest.max(0)  # [d_sae]
    order = best.argsort(descending=True)[: 4 * k]
    off = 1 if f.shape[0] > 1 else 0
    top = [[int(j), round(float(best[j]), 4), int(where[j]) + off] for j in order if float(best[j]) > 0]
    return {
        "tokens": token_strs(model, ids.tolist()),
        "ids": ids.tolist(),
        "hook": hook,
        "d_sae": sae.cfg.d_sae,
        "latents": per_pos,
        "top": top,
    }
