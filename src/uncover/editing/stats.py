"""Second moment of the MLP keys, the statistic behind ROME's and MEMIT's closed-form updates.

ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", eq. 2) inserts a
key–value pair into the MLP output projection ``W`` so that other keys are disturbed as
little as possible *in the metric of* ``C = E[k kᵀ]``, the uncentred second moment of the
keys (the inputs of the down projection, ``blocks.{l}.mlp.hook_post``) over ordinary text.
MEMIT (Meng et al. 2023) uses the same statistic, weighted against the new keys.

Here ``C`` is estimated on the embedded corpus (:mod:`uncover.data.corpus`, train split),
with a token budget (``mom2_samples``), running the model only up to the layer needed. It is
cached as safetensors under ``$UNCOVER_CACHE/editing/`` (computed once per model, layer and
budget), because it costs many forward passes and is reused by every edit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from uncover.core.names import act_name
from uncover.editing.base import EditError, check_layer
from uncover.hooks.harvest import harvest

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

BLOCK_LEN = 128


def stats_dir(cache: str | Path | None = None) -> Path:
    """Where key statistics are cached: ``cache`` or ``$UNCOVER_CACHE/editing`` (default user cache dir).

    >>> stats_dir("/tmp/x")
    PosixPath('/tmp/x')
    """
    if cache is not None:
        return Path(cache)
    from uncover.models.load import cache_dir

    return cache_dir() / "editing"


def model_key(model: HookedModel) -> str:
    """A file-name-safe key for ``model``: its name, shape, dtype and a fingerprint of its input embedding.

    The embedding tells apart models that share a name and shape (two fine-tunes in folders of the same name,
    two random tiny models); edits and pruning leave it alone, so an edited model keeps using its base model's
    statistics, as ROME and MEMIT do.

    >>> import re
    >>> bool(re.fullmatch(r"[\\w.-]+", model_key(model)))
    True
    """
    from uncover.core.fingerprint import weights_fingerprint

    c = model.cfg
    name = re.sub(r"[^\w.-]+", "_", os.path.basename(str(model.name).rstrip("/")) or "model")
    embed = weights_fingerprint(model.model.get_input_embeddings())[:8]
    return f"{name}-{c.n_layers}x{c.d_model}x{c.d_mlp}-{str(model.dtype).replace('torch.', '')}-{embed}"


def mom2_path(model: HookedModel, layer: int, mom2_samples: int, cache: str | Path | None = None) -> Path:
    """Cache file of the second moment of layer ``layer``'s keys.

    >>> mom2_path(model, 3, 4096, "/tmp/stats").name
    'mom2-layer3-4096.safetensors'
    """
    return stats_dir(cache) / model_key(model) / f"mom2-layer{layer}-{mom2_samples}.safetensors"


@torch.no_grad()
def key_moments(
    model: HookedModel,
    layers: list[int],
    tokens: torch.Tensor,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[int, torch.Tensor]:
    """Uncentred second moments ``E[k kᵀ]`` ``[d_mlp, d_mlp]`` (float64, on the CPU) of the keys of ``layers``,
    accumulated in float64 on the model's device whatever the model's dtype (bfloat16 keys lose nothing more).

    ``tokens``: ``[n_blocks, block_len]`` ids; every position but a leading BOS
    (:func:`uncover.data.corpus.prefix_len`) counts as one sample. The keys are
    harvested (:func:`uncover.hooks.harvest.harvest`): each forward pass stops after the deepest
    layer asked for.

    >>> from tests.conftest import tiny, tokens as toks
    >>> key_moments(tiny("llama"), [1], toks(4, 8), progress=False)[1].shape
    torch.Size([48, 48])
    """
    from uncover.data.corpus import prefix_len

    for layer in layers:
        check_layer(model, layer)
    skip = prefix_len(model, tokens) if model.tokenizer is not None else 0  # BOS: an outlier, not text
    d = model.cfg.d_mlp
    dev = model.device  # accumulate where the keys are (a GPU), in float64 whatever the model's dtype
    sums = {layer: torch.zeros(d, d, dtype=torch.float64, device=dev) for layer in layers}
    count = 0
    names = {act_name("post", layer): layer for layer in layers}
    for batch, got in harvest(model, tokens, list(names), batch_size=batch_size, dtype=torch.float64, device=dev,
                              progress=progress, desc=f"key statistics, layers {layers}"):
        for name, layer in names.items():
            k = got[name][:, skip:].reshape(-1, d)
            sums[layer].addmm_(k.T, k)
        count += batch.input_ids[:, skip:].numel()
    return {layer: (s / max(count, 1)).cpu() for layer, s in sums.items()}


def corpus_tokens(model: HookedModel, mom2_samples: int, block_len: int = BLOCK_LEN) -> torch.Tensor:
    """About ``mom2_samples`` tokens of the embedded corpus's train split, ``[n_blocks, block_len]``.

    >>> corpus_tokens(model, 300).shape
    torch.Size([3, 128])
    """
    from uncover.data.corpus import token_blocks

    if mom2_samples < 1:
        raise EditError(f"mom2_samples must be a positive number of tokens, not {mom2_samples}")
    hf = model.model.config
    limit = getattr(hf, "max_position_embeddings", None) or getattr(hf, "n_positions", None)
    block_len = min(block_len, int(limit)) if limit else block_len  # learned positions end somewhere
    blocks = token_blocks(model.tokenizer, block_len=block_len, split="train")
    n = max(1, -(-mom2_samples // block_len))
    if n > len(blocks):
        raise EditError(f"mom2_samples={mom2_samples} asks for more than the corpus's {len(blocks) * block_len} "
                        f"train tokens; valid: up to {len(blocks) * block_len}")
    g = torch.Generator().manual_seed(0)
    return blocks[torch.randperm(len(blocks), generator=g)[:n]]


def layer_mom2(
    model: HookedModel,
    layer: int,
    *,
    mom2_samples: int = 20_000,
    cache: str | Path | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """``C = E[k kᵀ]`` ``[d_mlp, d_mlp]`` (float64) of layer ``layer``'s keys over ~``mom2_samples`` corpus tokens.

    Loaded from the cache when present, else computed (tqdm bar) and saved there.

    >>> C = layer_mom2(model, 3, mom2_samples=4096)
    >>> C.shape
    torch.Size([1536, 1536])
    """
    from safetensors.torch import load_file, save_file

    check_layer(model, layer)
    path = mom2_path(model, layer, mom2_samples, cache)
    if path.is_file():
        return load_file(str(path))["mom2"]
    C = key_moments(model, [layer], corpus_tokens(model, mom2_samples), progress=progress)[layer]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"mom2": C.contiguous()}, str(tmp), metadata={"layer": str(layer), "tokens": str(mom2_samples)})
    tmp.replace(path)
    return C


def damped(C: torch.Tensor, damp: float) -> torch.Tensor:
    """``C + damp · mean(diag C) · I``: keeps an estimate from few tokens invertible.

    >>> damped(torch.eye(2) * 2, 0.5)
    tensor([[3., 0.],
            [0., 3.]])
    """
    if damp < 0:
        raise EditError(f"damp must be ≥ 0, not {damp}")
    if damp == 0:
        return C
    return C + damp * C.diagonal().mean() * torch.eye(C.shape[0], dtype=C.dtype)
