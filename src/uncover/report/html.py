"""Reports of many results: one page per result, sharing one copy of plotly.js.

A single result's self-contained page is :meth:`Result.to_html
<uncover.core.results.Result.to_html>` (rendered by :mod:`uncover.core.html`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uncover.core.config import check_writable
from uncover.core.html import PLOTLY_FILE, render_page
from uncover.core.persist import atomic_write


def write_reports(results: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write one page per result (``{file stem: result}``) into ``folder``, sharing one copy of plotly.js.

    Each page loads ``plotly.min.js`` from its folder (written once, 4.8 MB) instead of inlining it,
    so many reports cost one copy; they still work offline. A single report from
    ``Result.to_html`` stays self-contained.

    >>> import tempfile, uncover as uc
    >>> r = uc.run("lens", model, prompt="The Eiffel Tower is in the city of")
    >>> paths = write_reports({"a": r, "b": r}, tempfile.mkdtemp())
    >>> sorted(p.name for p in paths[0].parent.iterdir())
    ['a.html', 'b.html', 'plotly.min.js']
    """
    from plotly.offline import get_plotlyjs

    folder = Path(folder)
    check_writable(folder, directory=True, what="report folder")
    folder.mkdir(parents=True, exist_ok=True)
    js = folder / PLOTLY_FILE
    if not js.is_file() or js.stat().st_size == 0:
        atomic_write(js, lambda tmp: tmp.write_text(get_plotlyjs(), encoding="utf-8"))
    out = []
    for stem, r in results.items():
        page = render_page(r.title, r.html_sections(), plotly=PLOTLY_FILE)
        out.append(atomic_write(folder / f"{stem}.html", lambda tmp, page=page: tmp.write_text(page, encoding="utf-8")))
    return out
