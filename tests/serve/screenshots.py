"""Screenshots of the workbench on the embedded model for the docs (not a test).

``python -m tests.serve.screenshots [OUT_DIR]`` starts a live server, drives chromium headless through the
prompt explorer, an activation-patching run, the features view (the quick SAE, with one latent steered by the
``sae steer`` operation) and an attribution graph with two nodes grouped into a supernode, and saves
``workbench.png``, ``workbench-patch.png``, ``workbench-features.png`` and ``workbench-graph.png`` (default
``docs/img``). ``--only graph`` (or ``prompt``, ``patch``, ``features``) takes one of them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from tests.serve.conftest import LiveServer
from tests.serve.test_browser import ARGS, CHROMIUM


def main(out: Path, only: str | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import uncover

    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        server = LiveServer(uncover.load(), Path(tmp) / "results")
        try:
            with sync_playwright() as pw:
                ctx = pw.chromium.launch_persistent_context(
                    str(Path(tmp) / "profile"),
                    executable_path=CHROMIUM,
                    headless=True,
                    args=ARGS,
                    viewport={"width": 1400, "height": 1100},
                )
                page = ctx.new_page()
                page.goto(server.url)
                page.wait_for_selector("body[data-ready='1']", timeout=60_000)
                if only in (None, "prompt"):
                    prompt(page, out)
                if only in (None, "patch"):
                    patch(page, out)
                if only in (None, "features"):
                    features(page, out)
                if only in (None, "graph"):
                    graph(page, out)
                ctx.close()
        finally:
            server.stop()


def prompt(page, out: Path) -> None:
    page.click("#prompt-run")
    page.wait_for_selector("#dla-plot .heatmaplayer", timeout=300_000)
    page.screenshot(path=str(out / "workbench.png"))


def patch(page, out: Path) -> None:
    page.click("#tabs button[data-tab='patching']")
    page.click("form[data-op='patch'] button.run")
    page.wait_for_selector("#patching-result td.cell", timeout=600_000)
    page.click("#patching-result td.cell[data-index='20,3']")
    page.wait_for_selector("#patching-result .cell-label", timeout=300_000)
    page.locator("#patching-result .cell-label").scroll_into_view_if_needed()
    page.screenshot(path=str(out / "workbench-patch.png"))


def features(page, out: Path) -> None:
    page.click("#tabs button[data-tab='features']")
    page.click("#features-run")  # the quick SAE: trained on first use (about a CPU-minute), then cached
    page.wait_for_selector("#features-out .feature-token", timeout=600_000)
    page.locator("#features-out .row button.latent").first.click()
    page.select_option("#latent-detail select[name='mode']", "steer")
    page.fill("#latent-detail input[name='scale']", "40")
    page.click("#latent-detail button.latent-apply")
    page.wait_for_selector("#latent-detail .latent-effect .side", timeout=300_000)
    page.screenshot(path=str(out / "workbench-features.png"), full_page=True)


def graph(page, out: Path) -> None:
    page.click("#tabs button[data-tab='circuits']")  # the quick transcoders of the last two layers
    form = page.locator("form[data-op='graph']")
    form.locator("[name='quick_layers']").fill("28,29")
    form.locator("[name='quick_steps']").fill("300")
    form.locator("[name='max_feature_nodes']").fill("48")
    form.locator("button.run").click()
    svg = "#graph-result svg.graph"
    page.wait_for_selector(f"{svg} .graph-node", state="attached", timeout=600_000)
    inner = page.locator(f"{svg} .graph-node.kind-feature")
    if inner.count() < 2:
        inner = page.locator(f"{svg} .graph-node:not(.kind-embedding):not(.kind-logit)")
    for i in range(2):
        inner.nth(i).dispatch_event("click")
    page.fill("#graph-result input[name='supernode']", "grouped by hand")
    page.click("#graph-result button.group")
    page.locator("#graph-result .special").screenshot(path=str(out / "workbench-graph.png"))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    pick = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    main(Path(args[0]) if args and args[0] != pick else Path("docs/img"), pick)
