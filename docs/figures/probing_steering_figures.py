"""Render the PNG figures of docs/probing.md and docs/steering.md from a run's numbers.

Usage: ``python docs/figures/probing_steering_figures.py OUT_DIR`` where OUT_DIR holds the
``numbers.json`` written by ``docs/figures/probing_steering_numbers.py``. Each figure goes
plotly -> self-contained HTML -> headless chromium screenshot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def shot(fig, name: str, w: int = 1000, h: int = 520) -> None:
    html = Path(sys.argv[1]) / f"{name}.html"
    fig.update_layout(width=w, height=h, margin={"l": 60, "r": 20, "t": 60, "b": 50})
    fig.write_html(html, include_plotlyjs=True, full_html=True)
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={HERE / name}.png",
                    f"--window-size={w},{h}", "--hide-scrollbars", f"file://{html}"], check=True,
                   capture_output=True, timeout=180)


def main() -> None:
    from uncover.probing.ccs import CCSResult
    from uncover.probing.layers import ProbeCurve
    from uncover.steering.reading import ReadingResult
    from uncover.steering.sweep import SweepResult

    num = json.loads((Path(sys.argv[1]) / "numbers.json").read_text())
    c = num["curve"]
    # two folds at mean ± std reproduce the mean and the error bar of the recorded curve
    curve = ProbeCurve([r["hook"] for r in c], [[r["accuracy"] - r["accuracy_std"] / 2**0.5,
                                                  r["accuracy"] + r["accuracy_std"] / 2**0.5] for r in c],
                       [[r["control"]] * 2 for r in c], "logistic", "truth statements (SmolLM2-135M)", 0.5)
    shot(curve.plot(), "probing_truth_curve")
    cc = num["ccs"]
    shot(CCSResult([r["hook"] for r in cc], [r["ccs"] for r in cc], [r["supervised"] for r in cc],
                   [r["ccs_loss"] for r in cc], 0, 0, "truth pairs (SmolLM2-135M)").plot(), "probing_ccs")
    rd = num["reading"]
    shot(ReadingResult([r["hook"] for r in rd], {"pca": [r["pca"] for r in rd], "mean": [r["mean"] for r in rd]},
                       {}, 0, 0, "honesty pairs (SmolLM2-135M)").plot(), "steering_reading")
    sw = num["sweep"]
    shot(SweepResult("CAA sentiment, layer 12", [r["scale"] for r in sw], [r["score"] for r in sw],
                     [r["kl"] for r in sw], [r["fluency_nll"] for r in sw], [], []).plot(), "steering_sweep", 1100, 480)


if __name__ == "__main__":
    main()
