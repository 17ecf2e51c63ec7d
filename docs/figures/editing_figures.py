"""Reproduce docs/editing.md's ROME evaluation and render its figure.

``python docs/figures/editing_figures.py --run`` evaluates ROME (3 prefixes, default layer and
statistics) on every counterfactual the embedded model knows and writes
``editing_rome_rows.json`` (≈ 1 min per edit on a busy 2-core machine, one torch thread);
without ``--run`` it only renders ``editing_rome_counterfact.png`` from the saved rows
(plotly -> self-contained HTML -> headless chromium screenshot).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = HERE / "editing_rome_rows.json"


def run() -> None:
    import torch

    import uncover
    from uncover.data.counterfact import known
    from uncover.editing import RomeConfig, rome
    from uncover.editing.evaluate import evaluate_edits

    torch.set_num_threads(1)
    model = uncover.load()
    cfg = RomeConfig(prefixes=3)
    ev = evaluate_edits(model, lambda m, f: rome(m, f.prompt, f.subject, f.new, config=cfg, progress=False),
                        known(model), gen_tokens=20)
    ROWS.write_text(json.dumps(ev.rows, indent=0))
    print(ev.summary())


def shot(fig, name: str, w: int = 800, h: int = 420) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / f"{name}.html"
        fig.update_layout(width=w, height=h, margin={"l": 60, "r": 20, "t": 60, "b": 50})
        fig.write_html(html, include_plotlyjs=True, full_html=True)
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={HERE / name}.png",
                        f"--window-size={w},{h}", "--hide-scrollbars", f"file://{html}"], check=True,
                       capture_output=True, timeout=180)


def main() -> None:
    from uncover.editing.evaluate import EditEval

    if "--run" in sys.argv:
        run()
    ev = EditEval("rome", json.loads(ROWS.read_text()))
    print(ev.summary())
    shot(ev.plot(), "editing_rome_counterfact")


if __name__ == "__main__":
    main()
