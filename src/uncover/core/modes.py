"""Results of operations with modes: one result type whatever the mode.

Some commands have modes that compute different things (``uncover heads --detect / --pattern
/ --compose``, ``uncover neurons`` with or without ``--logits``). A flag must not change the
type an operation returns, so such an operation returns a :class:`ModeResult`: the mode's name
and the mode's own result (``result``), whose views it shows. Its JSON ``kind`` and records are
those of the inner result, so scripts reading the CLI's ``--json`` see the same document as the
technique's function would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uncover.core.results import Result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


@dataclass
class ModeResult(Result):
    """The result of one mode of an operation; every view is the inner result's.

    Attributes:
        mode: the mode that ran (e.g. ``detect``, ``pattern``, ``compose``).
        result: the mode's result.

    >>> from uncover.heads.detectors import HeadScores  # any result
    >>> r = ModeResult("detect", HeadScores("previous", torch.tensor([[0.5, 0.25]])))
    >>> r.to_dict()["kind"], r.title
    ('HeadScores', 'Previous head scores')
    """

    mode: str
    result: Result

    @property
    def title(self) -> str:
        return self.result.title

    def summary(self) -> str:
        return self.result.summary()

    def cli_text(self) -> str:
        return self.result.cli_text()

    def to_frame(self) -> pd.DataFrame:
        return self.result.to_frame()

    def plot(self) -> go.Figure:
        return self.result.plot()

    def to_dict(self) -> dict[str, Any]:
        """The inner result's document (its ``kind`` and records), with this result's provenance."""
        with self._provenance():
            return self.result.to_dict()

    def html_sections(self) -> list[Any]:
        """The inner result's sections (some add contexts or dashboards), with this result's provenance."""
        with self._provenance():
            return self.result.html_sections()

    def _repr_html_(self) -> str:
        with self._provenance():
            return self.result._repr_html_()

    def _provenance(self) -> _Lend:
        return _Lend(self.result, self.provenance)


class _Lend:
    """Lend the wrapper's provenance to the inner result for the duration of a ``with`` block."""

    def __init__(self, inner: Result, provenance: Any):
        self.inner, self.provenance = inner, provenance

    def __enter__(self) -> None:
        self.had = "provenance" in vars(self.inner)
        self.old = vars(self.inner).get("provenance")
        if self.provenance is not None:
            self.inner.provenance = self.provenance

    def __exit__(self, *exc: Any) -> None:
        if self.had:
            self.inner.provenance = self.old
        else:
            vars(self.inner).pop("provenance", None)
