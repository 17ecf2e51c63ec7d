"""Model editing: ROME, MEMIT, knowledge-neuron edits, and CounterFact-style evaluation.

Every edit changes MLP weights in place and returns an :class:`~uncover.editing.base.Edit`
that reverts bit-exactly, saves its weight deltas and re-applies them to a fresh model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uncover.editing.base import METHODS, Edit, EditError, Request
from uncover.editing.kn import kn_edit
from uncover.editing.memit import memit, memit_layers
from uncover.editing.rome import RomeConfig, rome, rome_layer

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


def edit(model: HookedModel, prompt: str, subject: str, target: str, *, method: str = "rome",
         layer: int | None = None, **options: Any) -> Edit:
    """Rewrite one fact with ``method`` (``rome``, ``memit`` or ``kn``); returns the applied :class:`Edit`.

    ``layer``: ROME's layer, the centre of MEMIT's 5 layers, or the only layer KN searches.
    Other options go to :func:`rome`, :func:`memit` or :func:`kn_edit`.

    >>> e = edit(model, "{} is in the city of", "The Eiffel Tower", " Rome", method="memit")  # doctest: +SKIP
    >>> e.revert()  # doctest: +SKIP
    """
    if method == "rome":
        return rome(model, prompt, subject, target, layer=layer, **options)
    if method == "memit":
        layers = memit_layers(model, layer) if layer is not None else None
        return memit(model, [Request.make(prompt, subject, target)], layers=layers, **options)
    if method == "kn":
        options.pop("mom2_samples", None)
        return kn_edit(model, prompt, subject, target, layers=None if layer is None else [layer], **options)
    raise EditError(f"unknown editing method {method!r}; valid: {', '.join(METHODS)}")


__all__ = ["METHODS", "Edit", "EditError", "Request", "RomeConfig", "edit", "kn_edit", "memit", "memit_layers",
           "rome", "rome_layer"]
