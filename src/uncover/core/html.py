"""Self-contained HTML pages: the page template and one section per result.

Pages inline plotly.js once (no CDN, they work offline) and show each result as a
section: title, summary, figure, a table and the provenance. :meth:`Result.to_html
<uncover.core.results.Result.to_html>` renders with this module; reports of many results
sharing one plotly.js copy are :func:`uncover.report.html.write_reports`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
p.summary{color:#444;white-space:pre-wrap}
table{border-collapse:collapse;font-size:.85rem;margin:.8rem 0}
td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:right}th{background:#f4f4f4}
details{margin:.5rem 0}.meta{color:#666;font-size:.85rem}
"""

#: the shared plotly.js file next to the pages of :func:`uncover.report.html.write_reports`
PLOTLY_FILE = "plotly.min.js"


@dataclass
class Section:
    """One part of a page: a heading and an HTML body.

    >>> Section("Notes", "<p>hello</p>").title
    'Notes'
    """

    title: str
    body: str

    @staticmethod
    def from_result(result: Any, include_js: bool = False, max_rows: int = 60) -> Section:
        """Figure + summary + table of a :class:`~uncover.core.results.Result`.

        ``include_js``: inline plotly.js in the section itself (pages inline it once in the head).
        """
        parts = []
        summary = result.summary()
        if summary:
            parts.append(f'<p class="summary">{html.escape(summary)}</p>')
        try:
            fig = result.plot()
        except NotImplementedError:
            fig = None
        if fig is not None:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=bool(include_js)))
        frame = result.to_frame()
        table = frame.head(max_rows).to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)
        more = f" (first {max_rows} of {len(frame)})" if len(frame) > max_rows else ""
        parts.append(f"<details><summary>Table{more}</summary>{table}</details>")
        prov = getattr(result, "provenance", None)
        if prov is not None:
            lines = "".join(f"<li>{html.escape(line)}</li>" for line in prov.lines())
            parts.append(f'<details class="meta"><summary>Provenance</summary><ul>{lines}</ul></details>')
        return Section(result.title, "\n".join(parts))


def render_page(title: str, sections: list[Section], intro: str = "", plotly: str = "inline") -> str:
    """A complete HTML document with the given sections.

    ``plotly``: ``"inline"`` puts plotly.js in the page (self-contained, works offline); any other
    value is the relative path of a shared copy next to the page (see :data:`PLOTLY_FILE`).

    >>> page = render_page("Demo", [Section("Notes", "<p>hello</p>")], plotly=PLOTLY_FILE)
    >>> page.startswith("<!DOCTYPE html>"), '<script type="text/javascript" src="plotly.min.js">' in page
    (True, True)
    """
    body = "\n".join(f"<section><h2>{html.escape(s.title)}</h2>\n{s.body}</section>" for s in sections)
    intro_html = f'<p class="meta">{intro}</p>' if intro else ""
    if plotly == "inline":
        from plotly.offline import get_plotlyjs

        script = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    else:
        script = f'<script type="text/javascript" src="{html.escape(plotly)}"></script>'
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style>{script}</head>"
        f"<body><h1>{html.escape(title)}</h1>{intro_html}\n{body}\n</body></html>"
    )


def render_results(title: str, results: list[Any], intro: str = "") -> str:
    """A page with one section per result, plotly.js inlined once.

    >>> import uncover as uc
    >>> r = uc.run("lens", model, prompt="The Eiffel Tower is in the city of")
    >>> render_results("Two lenses", [r, r]).count("<section>")
    2
    """
    sections = [s for r in results for s in r.html_sections()]
    return render_page(title, sections, intro)
