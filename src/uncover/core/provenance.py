"""The provenance record a result carries: where it came from (operation, config, model, versions, time).

:func:`uncover.execute` makes one for every result it returns
(:func:`uncover.ops.provenance.record`, with the model's weights fingerprint); result files
save it and :func:`~uncover.core.persist.load_result` reads it back, so it lives here with
the results rather than with the operation registry.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Provenance:
    """Where a result came from.

    Attributes:
        operation: the operation's name (``uncover list``).
        config: the config's fields (``Config.to_dict()``).
        model: :func:`~uncover.ops.provenance.model_identity` of the model it ran on, ``None`` for model-free
            operations.
        versions: :func:`~uncover.ops.provenance.versions` at run time.
        device, dtype: where and in which precision the model ran.
        seed: the seed set before the run (``None``: none).
        started: ISO-8601 UTC start time; seconds: wall time of the run.
        deterministic: whether a rerun is expected to reproduce the result.
        host: the machine's platform string.

    >>> p = Provenance("lens", {"prompt": "Hi"}, None, {"uncover": "0.1.0"}, "cpu", "float32", None,
    ...                "2025-01-01T00:00:00+00:00", 0.5)
    >>> Provenance.from_dict(p.to_dict()) == p, p.lines()[2]
    (True, 'model: none (trained from scratch)')
    """

    operation: str
    config: dict[str, Any]
    model: dict[str, Any] | None
    versions: dict[str, str]
    device: str
    dtype: str
    seed: int | None
    started: str
    seconds: float
    deterministic: bool = True
    host: str = field(default_factory=platform.platform)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        return cls(**data)

    def lines(self) -> list[str]:
        """Human-readable lines for reports."""
        m = self.model
        model = f"{m['name']} ({m['family']}, weights {m['fingerprint']})" if m else "none (trained from scratch)"
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        vers = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        return [f"operation: {self.operation}", f"config: {cfg}", f"model: {model}",
                f"device: {self.device}, dtype: {self.dtype}, seed: {self.seed}",
                f"started {self.started}, {self.seconds:.2f} s", f"versions: {vers}"]
