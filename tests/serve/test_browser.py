"""The workbench in a real browser: Playwright driving Debian's chromium, headless, against a live uvicorn server.

A tiny word-level model keeps these fast. Each test saves a screenshot under ``tests/serve/artifacts/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serve.conftest import ARTIFACTS, LiveServer, word_model
from uncover.ops.provenance import weights_fingerprint

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (CI installs chromium)")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    server = LiveServer(word_model(), tmp_path_factory.mktemp("results"))
    try:
        yield server
    finally:
        server.stop()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=ARGS, viewport={"width": 1400, "height": 1000}
        )
        try:
            yield ctx
        finally:
            ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context, live):
    p = browser_context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto(live.url)
    p.wait_for_selector("body[data-ready='1']", timeout=20_000)
    assert "token=" not in p.url  # the page keeps the token, not the address bar
    yield p
    p.close()
    assert not errors, errors


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def fill(page, op: str, values: dict) -> None:
    form = page.locator(f"form[data-op='{op}']").first
    for k, v in values.items():
        field = form.locator(f"[name='{k}']")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(str(v))
        else:
            field.fill(str(v))


def test_type_a_prompt_and_see_the_lens(page):
    page.fill("#prompt-text", "the tower is in the city of")
    page.click("#prompt-run")
    page.wait_for_selector("#lens-plot .heatmaplayer", timeout=20_000)
    assert page.locator("#prompt-tokens span").count() == 7
    assert page.locator("#prompt-top tr").count() == 11  # header + top 10
    page.wait_for_selector("#att-plot .heatmaplayer")
    page.select_option("#att-layer", "2")
    page.wait_for_selector("#dla-plot .heatmaplayer")
    assert "vs" in page.inner_text("#dla-title")
    shot(page, "prompt")


def test_run_a_patch_and_click_a_cell(page):
    page.click("#tabs button[data-tab='patching']")
    fill(
        page,
        "patch",
        {"clean": "the tower is in paris", "corrupt": "the tower is in rome", "answer": "paris", "wrong": "rome"},
    )
    page.click("form[data-op='patch'] button.run")
    page.wait_for_selector("#patching-result td.cell", timeout=30_000)
    assert page.locator("#patching-result td.cell").count() == 3 * 5
    page.click("#patching-result td.cell[data-index='2,4']")
    page.wait_for_selector("#patching-result .cell-label", timeout=20_000)
    assert "L2 resid_pre" in page.inner_text("#patching-result .cell-label")
    assert page.locator("#patching-result .cell-detail table").count() == 3  # base, patched, source
    shot(page, "patch")
    # the saved result is listed in the results folder and reopens
    page.locator("#file-list li button.open").first.click()
    page.wait_for_selector("#operations-result td.cell", timeout=20_000)


def test_click_cells_of_path_attribution_patching_and_causal_tracing(page):
    page.click("#tabs button[data-tab='operations']")
    pair = {"clean": "the tower is in paris", "corrupt": "the tower is in rome", "answer": "paris", "wrong": "rome"}
    for op, values, cell, label in (
        ("path", {**pair, "receivers": "logits", "receiver_positions": "-1"}, "1,2", "L1H2 → logits"),
        ("attribute", pair, "2,4", "L2 resid_pre"),
        (
            "trace",
            {
                "prompt": "the tower is in the city of",
                "subject": "the tower",
                "answer": "paris",
                "kind": "hidden",
                "samples": 2,
            },
            "1,3",
            "hidden state restored at L1",
        ),
    ):
        page.select_option("#op-select", op)
        fill(page, op, values)
        page.click(f"form[data-op='{op}'] button.run")
        page.wait_for_selector(f"#operations-result td.cell[data-index='{cell}']", timeout=20_000)
        page.click(f"#operations-result td.cell[data-index='{cell}']")
        page.wait_for_selector("#operations-result .cell-label", timeout=20_000)
        assert label in page.inner_text("#operations-result .cell-label"), op
        assert page.locator("#operations-result .cell-detail table").count() == 3, op
        shot(page, f"cell-{op}")


def test_circuit_graph_with_an_edge_slider(page):
    page.click("#tabs button[data-tab='circuits']")
    fill(
        page,
        "circuit",
        {
            "clean": "the tower is in paris",
            "corrupt": "the tower is in rome",
            "answer": "paris",
            "wrong": "rome",
            "edges": 12,
        },
    )
    page.click("form[data-op='circuit'] button.run")
    page.wait_for_selector("#circuits-result svg.circuit line", state="attached", timeout=30_000)
    assert page.locator("#circuits-result svg.circuit line").count() == 12
    page.fill("#edge-slider", "3")
    assert page.locator("#circuits-result svg.circuit line").count() == 3
    assert page.inner_text("#circuits-result .edge-count") == "3 of 12 edges"
    shot(page, "circuit")


def test_attribution_graph_pruning_sliders_and_a_supernode_grouped_by_hand(page, live):
    from tests.serve.test_api_graph import transcoder_set

    transcoder_set(live.app.state.server.model).save(live.app.state.server.results / "tset")
    page.click("#tabs button[data-tab='circuits']")
    fill(
        page,
        "graph",
        {
            "prompt": "the tower is in",
            "target": "paris",
            "transcoders": "tset",
            "max_feature_nodes": 24,
            "batch_size": 8,
            "node_threshold": 0.99,
            "edge_threshold": 0.99,
            "quick_layers": "",
        },
    )
    page.click("form[data-op='graph'] button.run")
    svg = "#graph-result svg.graph"
    page.wait_for_selector(f"{svg} .graph-node", state="attached", timeout=60_000)
    n_nodes = page.locator(f"{svg} .graph-node").count()
    inner = page.locator(f"{svg} .graph-node:not(.kind-embedding):not(.kind-logit)")
    assert inner.count() >= 2
    a, b = (inner.nth(i).get_attribute("data-id") for i in range(2))
    page.locator(f"{svg} .graph-node[data-id='{a}']").dispatch_event("click")
    page.locator(f"{svg} .graph-node[data-id='{b}']").dispatch_event("click")
    assert page.locator(f"{svg} .graph-node.selected").count() == 2
    page.fill("#graph-result input[name='supernode']", "my pair")
    page.click("#graph-result button.group")
    assert page.locator(f"{svg} .supernode").count() == 1
    assert page.locator(f"{svg} .graph-node").count() == n_nodes - 2  # the two members drawn as one supernode
    assert page.text_content(f"{svg} .supernode-label") == "my pair"
    assert page.input_value("#graph-result textarea.supernode-json") == f'[["my pair","{a}","{b}"]]'
    assert "my pair" in page.inner_text("#graph-result .supernode-list li")
    shot(page, "graph")
    before = page.inner_text("#graph-result .graph-count")
    page.fill("#graph-result input[name='node_threshold']", "0.3")  # pruned again by the server
    page.wait_for_function(
        "t => document.querySelector('#graph-result .graph-count').textContent !== t", arg=before, timeout=20_000
    )
    assert page.locator(f"{svg} .graph-node").count() < n_nodes
    page.click("#graph-result .supernode-list button.ungroup")
    assert page.locator(f"{svg} .supernode").count() == 0
    assert page.input_value("#graph-result textarea.supernode-json") == "[]"


def test_steering_side_by_side_with_a_scale_slider(page):
    page.click("#tabs button[data-tab='steering']")
    fill(
        page,
        "steer",
        {"prompts": "the tower is", "positive": "good", "negative": "bad", "layer": 1, "max_new_tokens": 3},
    )
    page.fill("#steer-scale", "8")  # releasing the slider runs the operation with that scale
    page.wait_for_selector("#steering-result h4", timeout=30_000)
    assert page.input_value("form[data-op='steer'] [name='scale']") == "8"
    rows = page.locator("#steering-result .special table tr")
    assert rows.count() == 2 and rows.nth(0).inner_text().split("\t")[:3] == ["prompt", "without", "with"]
    assert "nats/token" in page.inner_text("#steering-result .steer-kl")  # KL on neutral text
    assert "score shift" in page.inner_text("#steering-result .steer-score")
    job = page.locator("#job-list li").filter(has_text="steer").first
    assert "done" in job.inner_text()
    shot(page, "steering")


def test_features_of_a_prompt_a_latent_dashboard_and_its_ablation(page, live):
    import torch

    from uncover.sae import TopKSAE
    from uncover.sae.base import SAEConfig

    model = live.app.state.server.model
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sae = TopKSAE(
            SAEConfig(d_in=model.cfg.d_model, d_sae=48, architecture="topk", k=4, hook_name="blocks.1.hook_resid_post")
        )
    sae.save(live.app.state.server.results / "runs" / "mysae")
    page.click("#tabs button[data-tab='features']")
    page.wait_for_selector("#features-sae option[value='runs/mysae']", state="attached", timeout=10_000)
    page.select_option("#features-sae", "runs/mysae")
    page.fill("#features-text", "the tower is in paris")
    page.click("#features-run")
    page.wait_for_selector("#features-out .feature-token", timeout=20_000)
    assert page.locator("#features-out .feature-token").count() == 5
    page.locator("#features-out .feature-token button.latent").first.click()
    page.select_option("#latent-detail select[name='mode']", "ablate")
    page.click("#latent-detail button.latent-apply")
    page.wait_for_selector("#latent-detail .latent-effect .side", timeout=30_000)  # the `sae steer` job's view
    assert page.locator("#latent-detail .latent-effect .side table").count() == 2  # before, after
    assert "ablated" in page.inner_text("#latent-detail .latent-effect")
    assert "KL(before ‖ after)" in page.inner_text("#latent-detail .latent-effect .latent-kl")
    assert "done" in page.locator("#job-list li").filter(has_text="sae steer").first.inner_text()
    page.click("#latent-detail button.latent-dash")  # the `sae show` operation for that latent
    page.wait_for_selector("#latent-detail .latent-dashboard pre.summary", timeout=60_000)
    assert "feature" in page.inner_text("#latent-detail .latent-dashboard pre.summary")
    assert page.locator("#file-list li[data-file='runs/mysae/sae_weights.safetensors']").count() == 0
    shot(page, "features")


def test_apply_and_revert_an_edit(page, live):
    model = live.app.state.server.model
    before = weights_fingerprint(model.model)
    assert page.inner_text("#fingerprint") == before
    page.click("#tabs button[data-tab='editing']")
    fill(
        page,
        "edit",
        {
            "prompt": "the tower is in the city of",
            "subject": "the tower",
            "target": " london",
            "method": "rome",
            "layer": 1,
            "mom2_samples": 300,
            "gen_tokens": 0,
        },
    )
    page.click("form[data-op='edit'] button.run")
    page.wait_for_selector("#editing-result button.revert", timeout=60_000)
    edited = weights_fingerprint(model.model)
    assert edited != before
    page.wait_for_function(f"document.querySelector('#fingerprint').textContent === '{edited}'")
    page.click("#editing-result button.trace")  # causal trace before and after, side by side
    page.wait_for_selector("#editing-result .trace-result .compare .plot .main-svg", timeout=60_000)
    assert page.locator("#editing-result .trace-result .compare .plot").count() == 2
    assert weights_fingerprint(model.model) == edited
    page.fill("#editing-result textarea[name='paraphrases']", "the tower is in\nwe went to the tower in")
    page.fill("#editing-result textarea[name='neighbours']", "big ben is in the city of")
    page.fill("#editing-result input[name='true']", "paris")
    page.click("#editing-result button.generalisation")
    page.wait_for_selector("#editing-result .generalisation-result table", timeout=20_000)
    assert page.locator("#editing-result .generalisation-result table tr").count() == 1 + 4
    assert "after: efficacy" in page.inner_text("#editing-result .generalisation-scores")
    assert weights_fingerprint(model.model) == edited
    shot(page, "edit-applied")
    page.click("#editing-result button.revert")
    page.wait_for_selector("#editing-result .reverted", timeout=20_000)
    page.wait_for_function(f"document.querySelector('#fingerprint').textContent === '{before}'")
    assert weights_fingerprint(model.model) == before
    shot(page, "edit-reverted")


def test_start_and_cancel_a_training_job(page):
    import uncover as uc

    page.click("#tabs button[data-tab='operations']")
    for op in uc.operations():  # every operation's form comes from its schema and submits its example
        page.select_option("#op-select", op.name)
        form = f"#op-form-any form[data-op='{op.name}']"
        assert page.locator(f"{form} [name]").count() == len(op.config.schema()["fields"]), op.name
        sent = page.evaluate(f'uncover.formConfig(document.querySelector("{form}"))')
        expected = {f["name"]: f.get("default") for f in op.config.schema()["fields"]} | (op.example or {})
        assert sent == {k: v for k, v in expected.items() if v is not None and v != []}, op.name
    page.select_option("#op-select", "grok")
    fill(page, "grok", {"p": 7, "steps": 100000, "eval_every": 50, "threads": 1})
    page.click("form[data-op='grok'] button.run")
    running = page.locator("#job-list li[data-status='running']").filter(has_text="grok")
    running.wait_for(timeout=30_000)
    shot(page, "training-running")
    running.locator("button.cancel").click()
    page.locator("#job-list li[data-status='cancelled']").filter(has_text="grok").wait_for(timeout=30_000)
    shot(page, "training-cancelled")
