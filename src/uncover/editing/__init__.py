"""Model editing: ROME, MEMIT, knowledge-neuron edits, and CounterFact-style evaluation.

Every edit changes MLP weights in place and returns an :class:`~uncover.editing.base.Edit`
that reverts bit-exactly, saves its weight deltas and re-applies them to a fresh model.
"""

from uncover.editing.base import METHODS, Edit, EditError, Request
from uncover.editing.rome import RomeConfig, rome, rome_layer

__all__ = ["METHODS", "Edit", "EditError", "Request", "RomeConfig", "rome", "rome_layer"]
