"""Result base class: every technique returns one.

A result is a dataclass with documented fields and four views: ``to_frame()`` (a
pandas table), ``plot()`` (a plotly figure), ``to_html()`` (a self-contained page that
works offline: plotly.js is inlined, no CDN) and ``to_json()``. It saves losslessly
(``save()``; ``uncover.load_result``) and, when an operation made it, carries its
``provenance`` (operation, config, model identity, versions, time), which reports show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from uncover.core.html import Section, render_page
from uncover.core.persist import atomic_write, save_result

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.core.provenance import Provenance


@dataclass
class Result:
    """Base class of technique results; subclasses implement ``to_frame`` and ``plot``."""

    provenance: ClassVar[Provenance | None] = None  # set per instance by uncover.execute (not a field)

    @property
    def title(self) -> str:
        """A one-line title for reports."""
        return type(self).__name__

    def summary(self) -> str:
        """A short plain-text description shown above the figure in reports."""
        return ""

    def cli_text(self) -> str:
        """What the CLI prints without ``--json``: the summary, or where an artefact was written."""
        return self.summary()

    def to_frame(self) -> pd.DataFrame:
        """The result as a tidy table (one row per observation)."""
        raise NotImplementedError

    def plot(self) -> go.Figure:
        """The result as a plotly figure."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the kind, title, summary and the table's records."""
        out = {
            "kind": type(self).__name__,
            "title": self.title,
            "summary": self.summary(),
            "records": json.loads(self.to_frame().to_json(orient="records")),
        }
        if self.provenance is not None:
            out["provenance"] = self.provenance.to_dict()
        return out

    def save(self, path: str | Path) -> Path:
        """Save every field (tensors bit-exact) and the provenance to one file; see ``uncover.load_result``."""
        return save_result(self, path)

    def to_json(self, indent: int | None = 1) -> str:
        """``to_dict()`` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    def html_sections(self) -> list[Section]:
        """The report's sections (:class:`~uncover.core.html.Section`): figure, summary, table, provenance.

        Override to add sections (feature cards, contexts); :meth:`to_html` and shared-script reports use them.
        """
        return [Section.from_result(self)]

    def to_html(self, path: str | Path | None = None) -> str:
        """A self-contained HTML page (figure + table); written to ``path`` when given."""
        page = render_page(self.title, self.html_sections())
        if path is not None:
            atomic_write(Path(path), lambda tmp: tmp.write_text(page, encoding="utf-8"))
        return page

    def _repr_html_(self) -> str:  # notebooks
        return Section.from_result(self, include_js=True).body
