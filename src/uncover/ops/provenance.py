"""Recording provenance: the model's identity, its weights fingerprint, versions, and :func:`record`.

The record itself (:class:`~uncover.core.provenance.Provenance`) lives in ``core`` with the
results that carry it.

The model's identity includes a weights fingerprint that changes with any weight edit: a
hash over every parameter's name, shape, dtype and the integer sum of its raw bits
(integer addition does not depend on reduction order, so the fingerprint is the same on
every machine and thread count), plus a strided sample of the values.
"""

from __future__ import annotations

import datetime as dt
import platform
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.fingerprint import weights_fingerprint as _fingerprint
from uncover.core.provenance import Provenance
from uncover.core.version import __version__

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel
    from uncover.ops.registry import Operation

@torch.no_grad()
def weights_fingerprint(module: torch.nn.Module) -> str:
    """A 16-hex-digit hash of every parameter and buffer's exact bits (cheap: one pass of integer sums).

    :func:`uncover.core.fingerprint.weights_fingerprint`, with offloaded weights read where they live
    (:func:`uncover.hooks.weights.read`), so an edit to an offloaded layer changes the fingerprint too.

    >>> from uncover.ops.provenance import weights_fingerprint
    >>> lin = torch.nn.Linear(4, 4)
    >>> a = weights_fingerprint(lin); _ = lin.weight.data[0, 0].add_(1e-6)
    >>> a == weights_fingerprint(lin)
    False
    """
    from uncover.hooks import weights

    def resolve(name: str) -> torch.Tensor | None:
        try:
            return weights.read(module, name)
        except (AttributeError, KeyError, LookupError):  # a buffer, or a name accelerate does not map
            return None

    return _fingerprint(module, resolve)


def model_identity(model: HookedModel) -> dict[str, Any]:
    """Name, source (what ``uncover.load`` was given), family, size and weights fingerprint.

    >>> sorted(model_identity(model))
    ['d_model', 'family', 'fingerprint', 'n_layers', 'name', 'source']
    """
    c = model.cfg
    return {"name": model.name, "source": getattr(model, "source", model.name), "family": c.family,
            "n_layers": c.n_layers, "d_model": c.d_model, "fingerprint": weights_fingerprint(model.model)}


def versions() -> dict[str, str]:
    """Versions of uncover, torch, transformers and Python.

    >>> sorted(versions())
    ['python', 'torch', 'transformers', 'uncover']
    """
    import transformers

    return {"uncover": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def record(op: Operation, config: Any, model: HookedModel | None, seed: int | None, started: float,
           seconds: float) -> Provenance:
    """The :class:`~uncover.core.provenance.Provenance` of one run of ``op`` (what :func:`uncover.execute` stamps).

    ``started``: the start time (seconds since the epoch); ``seconds``: the run's wall time.

    >>> import uncover as uc
    >>> p = record(uc.get_operation("lens"), uc.get_operation("lens").config(prompt="Hi"), model, None, 0.0, 1.25)
    >>> p.operation, p.started, p.model["fingerprint"] == weights_fingerprint(model.model)
    ('lens', '1970-01-01T00:00:00+00:00', True)
    """
    when = dt.datetime.fromtimestamp(started, tz=dt.UTC).isoformat(timespec="seconds")
    return Provenance(op.name, config.to_dict(), model_identity(model) if model is not None else None, versions(),
                      str(model.device) if model is not None else "cpu",
                      str(model.dtype).removeprefix("torch.") if model is not None else "float32",
                      seed, when, round(seconds, 4), op.deterministic)
