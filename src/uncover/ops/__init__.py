"""The operation layer: every technique declared once, and what is generated from the declarations.

An :class:`Operation` is a name, a :class:`~uncover.core.config.Config` subclass, a pure
``run(model, config, progress) -> Result`` and its result type. The registry
(:func:`operations`) is what the CLI, the web workbench, reruns and distributed jobs are built
from; :func:`execute` runs one and stamps its result with :class:`Provenance`; results save
and load losslessly (:func:`save_result`, :func:`load_result`; both live in :mod:`uncover.core.persist`,
below the techniques, and are offered here as part of the operation layer's API).
"""

from uncover.core.persist import load_result, save_result
from uncover.core.provenance import Provenance
from uncover.ops.registry import Operation, execute, get_operation, operation, operations, run

__all__ = ["Operation", "Provenance", "execute", "get_operation", "operation", "operations", "run",
           "save_result", "load_result"]
