"""Reproduce docs/editing.md's ROME and knowledge-neuron evaluations and render the ROME figure.

``python docs/figures/editing_figures.py --run`` evaluates ROME (3 prefixes, default layer and
statistics) on every counterfactual the embedded model knows and writes
``editing_rome_rows.json`` (≈ 1 min per edit on a busy 2-core machine, one torch thread);
``--run-kn`` does the same for knowledge-neuron edits (default settings: neurons of the edit
prompt in the upper half of the layers, value change searched for a 1-nat margin) and writes
``editing_kn_rows.json`` (≈ 10 s per edit). Without them it prints the saved scores and only
renders ``editing_rome_counterfact.png`` from the saved rows (plotly -> self-contained HTML ->
headless chromium screenshot).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = HERE / "editing_rome_rows.json"
KN_ROWS = HERE / "editing_kn_rows.json"


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


def run_kn() -> None:
    import torch

    import uncover
    from uncover.data.counterfact import known
    from uncover.editing import kn_edit
    from uncover.editing.evaluate import evaluate_edits

    torch.set_num_threads(1)
    model = uncover.load()
    ev = evaluate_edits(model, lambda m, f: kn_edit(m, f.prompt, f.subject, f.new, old=f.true), known(model),
                        method="kn", gen_tokens=20)
    KN_ROWS.write_text(json.dumps(ev.rows, indent=0))
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
    if "--run-kn" in sys.argv:
        run_kn()
    if KN_ROWS.is_file():
        print(EditEval("kn", json.loads(KN_ROWS.read_text())).summary())
    ev = EditEval("rome", json.loads(ROWS.read_text()))
    print(ev.summary())
    shot(ev.plot(), "editing_rome_counterfact")


if __name__ == "__main__":
    main()
