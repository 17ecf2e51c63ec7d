"""``GrokReport``: what the ``grok`` operation returns, whichever way it ran.

One run gives its progress measures (:class:`~uncover.dynamics.grokking.result.GrokkingResult`);
``--compare`` gives a comparison of runs (:class:`~uncover.dynamics.grokking.compare.GrokSweepResult`).
The report holds one of the two and shows it (title, summary, table, figure and JSON are those of
the result it holds), so the operation has one result type whatever its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uncover.core.results import Result
from uncover.dynamics.grokking.compare import GrokSweepResult
from uncover.dynamics.grokking.result import GrokkingResult

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


@dataclass
class GrokReport(Result):
    """The progress measures of one grokking run, or a comparison of runs.

    >>> import pandas as pd
    >>> from uncover.dynamics.grokking.config import GrokConfig
    >>> m = pd.DataFrame({"step": [0, 10], "train_acc": [0.1, 1.0], "test_acc": [0.0, 0.2], "test_loss": [4, 3]})
    >>> r = GrokReport(comparison=GrokSweepResult({"wd=1": (GrokConfig(p=7), m)}))
    >>> r.title, r.to_dict()["kind"]
    ('Grokking comparison (1 runs)', 'GrokSweepResult')
    """

    run: GrokkingResult | None = None
    """Curves, progress measures and phases of one run (``None`` with ``--compare``)."""
    comparison: GrokSweepResult | None = None
    """Final accuracies and times to memorize/generalise of several runs (only with ``--compare``)."""

    def __post_init__(self) -> None:
        if (self.run is None) == (self.comparison is None):
            raise ValueError("a GrokReport holds exactly one of run and comparison")

    @property
    def shown(self) -> Result:
        """The result this report holds."""
        return self.run if self.run is not None else self.comparison  # type: ignore[return-value]

    @property
    def title(self) -> str:
        return self.shown.title

    def summary(self) -> str:
        return self.shown.summary()

    def to_frame(self) -> pd.DataFrame:
        return self.shown.to_frame()

    def plot(self) -> go.Figure:
        return self.shown.plot()

    def to_dict(self) -> dict[str, Any]:
        """The held result's JSON (its ``kind``: ``GrokkingResult`` or ``GrokSweepResult``), with provenance."""
        d = self.shown.to_dict()
        if self.provenance is not None:
            d["provenance"] = self.provenance.to_dict()
        return d
