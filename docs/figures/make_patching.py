"""Regenerate docs/patching.md's figures: .venv/bin/python docs/figures/make_patching.py (needs chromium)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import uncover
from uncover.data.tasks import ioi
from uncover.patching.activation import activation_patching
from uncover.patching.path import path_patching

HERE = Path(__file__).parent
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def shoot(fig, name: str, width: int = 1000, height: int = 700) -> None:
    fig.update_layout(width=width, height=height)
    with tempfile.TemporaryDirectory() as d:
        page = Path(d) / "f.html"
        fig.write_html(page, include_plotlyjs=True)
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--hide-scrollbars", f"--screenshot={HERE / name}",
                        f"--window-size={width + 20},{height + 20}", page.as_uri()], check=True,
                       capture_output=True)


def main() -> None:
    model = uncover.load()
    r = activation_patching(model, CLEAN, CORRUPT, " Mary", " John")
    shoot(r.plot(), "patching_ioi_resid.png")
    t = ioi(12, corrupt="abc").filter_correct(model).check(model)
    pairs = t.pairs[:6]
    args = ([p.clean for p in pairs], [p.corrupt for p in pairs], [p.answer for p in pairs], [p.wrong for p in pairs])
    logits = path_patching(model, *args)
    shoot(logits.plot(), "patching_ioi_path_logits.png", 800, 700)
    print(logits.summary())
    movers = [f"L{la}H{h}.q" for la, h, v in logits.top(10) if v < -0.05]
    q = path_patching(model, *args, receivers=movers, receiver_positions=[-1])
    shoot(q.plot(), "patching_ioi_path_movers.png", 800, 700)
    print(movers)
    print(q.summary())


if __name__ == "__main__":
    main()
