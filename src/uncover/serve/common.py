"""Helpers shared by the workbench's views: limits, token arguments, distributions and JSON-ready numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UsageError

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

#: longest prompt of the prompt and features views, in tokens
MAX_TOKENS = 256


def rounded(t: torch.Tensor, digits: int = 4) -> Any:
    """A tensor as nested lists of floats rounded to ``digits`` (NaN and ±inf as ``None``, for JSON).

    >>> rounded(torch.tensor([[0.123456, float("nan")], [1.0, -2.5]]), 3)
    [[0.123, None], [1.0, -2.5]]
    """
    x = t.detach().to("cpu", torch.float64)
    finite = torch.isfinite(x)
    scale = 10.0**digits
    out = ((x * scale).round() / scale).tolist()  # float64: 0.123 stays 0.123 in JSON
    if bool(finite.all()):
        return out

    def walk(v: Any, ok: Any) -> Any:
        return [walk(a, b) for a, b in zip(v, ok)] if isinstance(v, list) else (v if ok else None)

    return walk(out, finite.tolist())


def token_id(model: HookedModel, tok: str | int | None, fallback: int) -> int:
    """The id of ``tok`` (a single-token text or an id in range); ``fallback`` when it is empty.

    >>> token_id(model, None, 7), token_id(model, 42, 7)
    (7, 42)
    """
    if tok is None or tok == "":
        return fallback
    if isinstance(tok, bool) or not isinstance(tok, int | str):
        raise UsageError(f"a token must be text or a token id, got {tok!r}")
    if isinstance(tok, int):
        if not 0 <= tok < model.cfg.d_vocab:
            raise UsageError(f"token id {tok} is out of range; this model has ids 0..{model.cfg.d_vocab - 1}")
        return tok
    return model.to_single_token(tok)


def token_strs(model: HookedModel, ids: list[int]) -> list[str]:
    """Each token id as its text (the model's public ``to_str_tokens`` of a 1-D tensor).

    >>> token_strs(model, model.to_tokens("The Eiffel")[0].tolist())
    ['The', ' E', 'iffel']
    """
    return model.to_str_tokens(torch.tensor(ids, dtype=torch.long))


def dist(logits: torch.Tensor, model: HookedModel, k: int, ids: list[int]) -> dict[str, Any]:
    """Top-k ``[token, id, prob]`` and the probabilities of ``ids`` under ``logits`` ``[d_vocab]``.

    >>> d = dist(model("The Eiffel Tower is in the city of")[0, -1], model, 2, [])
    >>> d["top"][0][0], d["tracked"]
    (' Paris', [])
    """
    p = torch.softmax(logits.float(), -1)
    tp, ti = p.topk(k)
    return {
        "top": [[token_strs(model, [int(i)])[0], int(i), round(float(v), 5)] for v, i in zip(tp, ti)],
        "tracked": [round(float(p[i]), 5) for i in ids],
    }


def prompt_ids(model: HookedModel, prompt: Any, view: str = "features") -> torch.Tensor:
    """Token ids ``[pos]`` of a prompt from the page (refused when empty or over :data:`MAX_TOKENS`)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError("prompt: give some text")
    ids = model.to_tokens(prompt)[0]
    if len(ids) > MAX_TOKENS:
        raise UsageError(f"prompt is {len(ids)} tokens; the {view} view takes at most {MAX_TOKENS}")
    return ids
