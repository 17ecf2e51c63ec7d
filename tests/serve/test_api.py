"""The workbench's API with the framework's test client, on a tiny word-level model.

Every route, the token, host and origin rules, bounded bodies and texts, traversal out of the results
folder, jobs (progress, cancel, failure that leaves the model intact), edits reverted bit-exactly, reruns
and comparisons, and the prompt view against the library functions it reuses.
"""

from __future__ import annotations

import time

import pytest
import torch

from tests.serve.conftest import TOKEN, wait
from uncover.ops.provenance import weights_fingerprint

PATCH = {"clean": "the tower is in paris", "corrupt": "the tower is in rome", "answer": "paris", "wrong": "rome"}


# ---- token, host, origin, bodies ----------------------------------------------------------------
def test_every_api_route_needs_the_token(app):
    from fastapi.testclient import TestClient

    c = TestClient(app, base_url="http://127.0.0.1:8765")
    for method, path in [
        ("get", "/api/model"),
        ("get", "/api/operations"),
        ("get", "/api/jobs"),
        ("post", "/api/jobs"),
        ("post", "/api/prompt"),
        ("get", "/api/files"),
        ("get", "/api/files/x"),
        ("post", "/api/compare"),
        ("post", "/api/open"),
    ]:
        r = getattr(c, method)(path)
        assert r.status_code == 401, path
        assert "token" in r.json()["error"]
    assert c.get("/api/model", headers={"X-Uncover-Token": "wrong"}).status_code == 401
    assert c.get(f"/api/model?token={TOKEN}").status_code == 200
    assert c.get("/api/model", headers={"X-Uncover-Token": TOKEN}).status_code == 200
    page = c.get("/")  # the page itself holds no data; it reads the token from its URL
    assert page.status_code == 200 and "uncover" in page.text


def test_unknown_host_and_foreign_origin_are_refused(client):
    r = client.get("/api/model", headers={"Host": "evil.example:8765"})
    assert r.status_code == 400 and "host" in r.json()["error"]
    r = client.post("/api/prompt", json={"prompt": "the tower"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "origin" in r.json()["error"]
    r = client.post("/api/prompt", json={"prompt": "the tower"}, headers={"Origin": "null"})
    assert r.status_code == 403
    ok = client.post("/api/prompt", json={"prompt": "the tower"}, headers={"Origin": "http://127.0.0.1:8765"})
    assert ok.status_code == 200


def test_bodies_and_texts_are_bounded(client):
    r = client.post(
        "/api/prompt", content=b'{"prompt": "' + b"a" * 300_000 + b'"}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and "too large" in r.json()["error"]
    r = client.post("/api/prompt", json={"prompt": "the " * 1500})
    assert r.status_code == 400 and "at most" in r.json()["error"]
    r = client.post("/api/jobs", json={"op": "lens", "config": {"prompt": "the " * 1500}})
    assert r.status_code == 400 and "at most 4000" in r.json()["error"]
    r = client.post("/api/prompt", content=b"not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "the request body is not JSON"}
    r = client.post("/api/prompt", json=[1, 2])
    assert r.status_code == 400


def test_bad_inputs_are_clear_4xx_json(client):
    r = client.post("/api/jobs", json={"op": "lenz", "config": {}})
    assert r.status_code == 400 and "lens" in r.json()["error"]  # did you mean
    r = client.post("/api/jobs", json={"op": "lens", "config": {"prompt": "the", "k": 0}})
    assert r.status_code == 400 and r.json()["error"] == "LensConfig: k (--k) must be >= 1, got 0"
    r = client.post("/api/jobs", json={"op": "lens", "config": {"prompt": "the", "bogus": 1}})
    assert r.status_code == 400 and "unknown field 'bogus'" in r.json()["error"]
    r = client.post("/api/jobs", json={"op": "lens", "config": {"prompt": "the", "targets": ["paris rome"]}})
    assert r.status_code == 400 and "not one" in r.json()["error"]  # a model check, before queueing
    r = client.post("/api/jobs", json={"op": "lens", "config": {"prompt": "the"}, "seed": "x"})
    assert r.status_code == 400
    assert client.get("/api/jobs/000000000000").status_code == 404
    assert client.get("/api/jobs/../../etc").status_code == 404
    r = client.post("/api/prompt", json={"prompt": "   "})
    assert r.status_code == 400 and "prompt" in r.json()["error"]
    r = client.post("/api/prompt", json={"prompt": "the tower", "answer": "paris rome"})
    assert r.status_code == 400 and "not one" in r.json()["error"]
    r = client.post("/api/prompt", json={"prompt": "the tower", "k": 0})
    assert r.status_code == 400
    assert client.get("/static/nothing.js").status_code == 404


def test_no_traceback_in_a_crash(app):
    from fastapi.testclient import TestClient

    srv = app.state.server
    broken = srv.model.model.config  # a prompt view that crashes inside the worker
    c = TestClient(
        app, base_url="http://127.0.0.1:8765", headers={"X-Uncover-Token": TOKEN}, raise_server_exceptions=False
    )
    original = srv.model.tokenize
    srv.model.tokenize = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom\nTraceback (most recent"))
    try:
        r = c.post("/api/prompt", json={"prompt": "the tower"})
    finally:
        srv.model.tokenize = original
    assert r.status_code == 500 and "Traceback" not in r.text and "boom" not in r.text
    assert broken is srv.model.model.config and c.get("/api/model").status_code == 200


# ---- files: nothing outside the results folder -----------------------------------------------------
@pytest.mark.parametrize(
    "name", ["../secret.txt", "..%2Fsecret.txt", "%2Fetc%2Fpasswd", "a/../../secret.txt", "..\\secret.txt"]
)
def test_no_traversal_out_of_the_results_folder(client, app, name):
    root = app.state.server.results
    (root.parent / "secret.txt").write_text("TOP-SECRET-CONTENT")
    (root / "mine.txt").write_text("mine")
    assert client.get("/api/files/mine.txt").text == "mine"
    r = client.get(f"/api/files/{name}")
    assert r.status_code in (400, 404) and "TOP-SECRET" not in r.text
    r = client.post("/api/open", json={"name": name.replace("%2F", "/")})
    assert r.status_code in (400, 404) and "TOP-SECRET" not in r.text
    names = [f["name"] for f in client.get("/api/files").json()]
    assert names == ["mine.txt"]


def test_config_paths_are_confined_to_the_results_folder(client, app):
    r = client.post("/api/jobs", json={"op": "lens", "config": {"prompt": "the", "tuned": "/etc/passwd"}})
    assert r.status_code == 400 and "outside the results folder" in r.json()["error"]
    r = client.post("/api/jobs", json={"op": "train-lens", "config": {"out": "../x.safetensors", "steps": 0}})
    assert r.status_code == 400 and "outside" in r.json()["error"]
    r = client.post("/api/jobs", json={"op": "probe", "config": {"data": "../../data.csv"}})
    assert r.status_code == 400 and "outside" in r.json()["error"]
    r = client.post("/api/jobs", json={"op": "lens", "config": {"prompt": "the", "tuned": "missing.safetensors"}})
    assert r.status_code == 400 and "does not exist" in r.json()["error"]
    assert str(app.state.server.results) in r.json()["error"]  # resolved inside the folder
    from uncover.lenses.ops import TrainLensConfig
    from uncover.serve.security import confine_config

    root = app.state.server.results
    fields = confine_config(TrainLensConfig, {"steps": 0}, root)  # the default path as well
    assert fields["out"] == str(root / "tuned-lens.safetensors")
    assert confine_config(TrainLensConfig, {"out": str(root / "a.safetensors")}, root)["out"].startswith(str(root))
    (root / "sub").mkdir()
    (root / "sub" / "out").symlink_to(root.parent)  # a link out of the folder is outside too
    r = client.post("/api/jobs", json={"op": "train-lens", "config": {"out": "sub/out/x.safetensors"}})
    assert r.status_code == 400 and "outside" in r.json()["error"]


def test_a_saved_result_with_paths_outside_is_not_rerun(client, app, wmodel, tmp_path):
    import uncover as uc

    r = uc.run("train-lens", wmodel, out=str(tmp_path / "elsewhere.safetensors"), steps=0)
    r.save(app.state.server.results / "foreign.safetensors")
    j = client.post("/api/open", json={"name": "foreign.safetensors"}).json()
    r = client.post(f"/api/jobs/{j['id']}/rerun")
    assert r.status_code == 400 and "outside the results folder" in r.json()["error"]


# ---- operations and jobs -----------------------------------------------------------------------------
def test_operations_are_listed_from_the_registry(client):
    import uncover as uc

    ops = client.get("/api/operations").json()
    assert [o["name"] for o in ops] == [op.name for op in uc.operations()]
    lens = next(o for o in ops if o["name"] == "lens")
    assert lens["config"]["fields"][0]["name"] == "prompt" and lens["config"]["fields"][0]["required"]
    m = client.get("/api/model").json()
    assert m["n_layers"] == 3 and m["fingerprint"] == weights_fingerprint(app_model(client).model)


def app_model(client):
    return client.app.state.server.model if hasattr(client.app, "state") else None


def test_a_job_runs_saves_and_renders(client, wmodel):
    import uncover as uc

    j = client.post("/api/jobs", json={"op": "patch", "config": PATCH}).json()
    assert j["status"] in ("queued", "running", "done") and j["op"] == "patch"
    j = wait(client, j["id"])
    assert j["status"] == "done" and j["forwards"] >= 1 and j["provenance"]["operation"] == "patch"
    res = client.get(f"/api/jobs/{j['id']}/result").json()
    ref = uc.run("patch", wmodel, **PATCH)
    assert res["view"]["type"] == "patch"
    torch.testing.assert_close(torch.tensor(res["view"]["grid"]), ref.grid, atol=1e-4, rtol=0)
    assert res["records"] and res["columns"]
    fig = client.get(f"/api/jobs/{j['id']}/figure").json()
    assert fig["data"][0]["type"] == "heatmap"
    f = client.get(f"/api/jobs/{j['id']}/file")
    assert f.status_code == 200 and "patch-" in f.headers["content-disposition"]
    report = client.get(f"/api/jobs/{j['id']}/report")
    assert report.status_code == 200 and "<html" in report.text.lower()
    assert [h["id"] for h in client.get("/api/jobs").json()] == [j["id"]]
    # reopen the saved file: a new history entry with the same provenance
    again = client.post("/api/open", json={"name": j["files"]["result"]}).json()
    assert again["status"] == "done" and again["provenance"] == j["provenance"]


def test_a_patch_cell_is_that_single_patch(client, wmodel):
    from uncover.hooks.interventions import Replace

    j = wait(client, client.post("/api/jobs", json={"op": "patch", "config": PATCH}).json()["id"])
    cell = client.post(f"/api/jobs/{j['id']}/cell", json={"index": [1, 4]}).json()
    # reference: run the corrupt prompt with the clean resid_pre of layer 1 at position 4
    _, cache = wmodel.run_with_cache(PATCH["clean"], names=["blocks.1.hook_resid_pre"])
    with (
        torch.no_grad(),
        wmodel.intervene([Replace("blocks.1.hook_resid_pre", positions=(4,), source=cache["blocks.1.hook_resid_pre"])]),
    ):
        p = torch.softmax(wmodel(PATCH["corrupt"])[0, -1], -1)
    a, w = wmodel.to_single_token("paris"), wmodel.to_single_token("rome")
    assert cell["patched"]["tracked"] == pytest.approx([float(p[a]), float(p[w])], abs=1e-4)
    clean_p = torch.softmax(wmodel(PATCH["clean"])[0, -1], -1)
    assert cell["source"]["tracked"] == pytest.approx([float(clean_p[a]), float(clean_p[w])], abs=1e-4)
    # patching the whole residual at the last layer's differing position restores the clean run exactly
    assert cell["patched"]["tracked"] == pytest.approx(cell["source"]["tracked"], abs=1e-4)
    r = client.post(f"/api/jobs/{j['id']}/cell", json={"index": [9, 0]})
    assert r.status_code == 400 and "outside the grid" in r.json()["error"]
    r = client.post(f"/api/jobs/{j['id']}/cell", json={"index": "x"})
    assert r.status_code == 400


def test_cancel_a_running_training_job(client):
    j = client.post(
        "/api/jobs", json={"op": "grok", "config": {"p": 7, "steps": 100000, "eval_every": 50, "threads": 1}}
    ).json()
    end = time.time() + 30
    while client.get(f"/api/jobs/{j['id']}").json()["status"] == "queued" and time.time() < end:
        time.sleep(0.02)
    time.sleep(0.3)
    client.post(f"/api/jobs/{j['id']}/cancel")
    j = wait(client, j["id"], timeout=30)
    assert j["status"] == "cancelled" and j["files"] == {}
    assert client.get(f"/api/jobs/{j['id']}/result").status_code == 409
    # the worker goes on
    assert (
        wait(client, client.post("/api/jobs", json={"op": "patch", "config": PATCH}).json()["id"])["status"] == "done"
    )


def test_cancel_a_queued_job_and_the_queue_runs_one_at_a_time(client):
    long = client.post("/api/jobs", json={"op": "grok", "config": {"p": 7, "steps": 100000, "threads": 1}}).json()
    queued = client.post("/api/jobs", json={"op": "patch", "config": PATCH}).json()
    assert client.get(f"/api/jobs/{queued['id']}").json()["status"] == "queued"
    assert client.post(f"/api/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
    client.post(f"/api/jobs/{long['id']}/cancel")
    assert wait(client, long["id"])["status"] == "cancelled"
    assert wait(client, queued["id"])["status"] == "cancelled"


def test_a_view_waiting_too_long_for_a_busy_model_is_503(client, monkeypatch):
    import uncover.serve.server as server_module

    long = client.post("/api/jobs", json={"op": "grok", "config": {"p": 7, "steps": 100000, "threads": 1}}).json()
    monkeypatch.setattr(server_module, "VIEW_TIMEOUT", 0.2)  # where Server.call reads it
    t0 = time.monotonic()
    r = client.post("/api/prompt", json={"prompt": "the tower"})
    assert time.monotonic() - t0 < 30, "the view did not give up after VIEW_TIMEOUT"
    assert r.status_code == 503 and "busy" in r.json()["error"]
    client.post(f"/api/jobs/{long['id']}/cancel")
    assert wait(client, long["id"])["status"] == "cancelled"


def test_a_failing_job_leaves_server_and_model_intact(client, wmodel, monkeypatch):
    from uncover.patching import ops as patching_ops

    before = weights_fingerprint(wmodel.model)
    n_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in wmodel.model.modules())

    def broken(*a, **k):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(patching_ops, "activation_patching", broken)
    j = wait(client, client.post("/api/jobs", json={"op": "patch", "config": PATCH}).json()["id"])
    assert j["status"] == "failed" and j["error"] == "RuntimeError: broken on purpose"
    monkeypatch.undo()
    assert weights_fingerprint(wmodel.model) == before
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in wmodel.model.modules()) == n_hooks
    assert (
        wait(client, client.post("/api/jobs", json={"op": "patch", "config": PATCH}).json()["id"])["status"] == "done"
    )
    # a weight edit that fails (no subject-specific neuron in a random model) changes nothing
    cfg = {
        "prompt": "the tower is in the city of",
        "subject": "the tower",
        "target": " london",
        "method": "kn",
        "layer": 1,
        "gen_tokens": 0,
    }
    j = wait(client, client.post("/api/jobs", json={"op": "edit", "config": cfg}).json()["id"])
    assert j["status"] == "failed" and "knowledge neurons" in j["error"] and "Traceback" not in j["error"]
    assert weights_fingerprint(wmodel.model) == before and client.get("/api/model").json()["applied"] == []


def test_edit_then_revert_is_bit_identical(client, wmodel):
    before = client.get("/api/model").json()["fingerprint"]
    cfg = {
        "prompt": "the tower is in the city of",
        "subject": "the tower",
        "target": " london",
        "method": "rome",
        "layer": 1,
        "mom2_samples": 300,
        "gen_tokens": 0,
    }
    j = wait(client, client.post("/api/jobs", json={"op": "edit", "config": cfg}).json()["id"])
    assert j["status"] == "done", j["error"]
    edited = client.get("/api/model").json()
    assert edited["fingerprint"] != before and edited["applied"] == [j["id"]]
    res = client.get(f"/api/jobs/{j['id']}/result").json()
    assert res["view"]["type"] == "edit" and {r["stage"] for r in res["view"]["rows"]} == {"before", "after"}
    rerun = wait(client, client.post(f"/api/jobs/{j['id']}/rerun").json()["id"])
    assert rerun["status"] == "done", rerun["error"]
    assert client.get("/api/model").json()["fingerprint"] == edited["fingerprint"]  # the rerun's edit is undone
    # the causal trace before and after: the edit is off for the first trace, then back on, bit for bit
    t = wait(client, client.post(f"/api/jobs/{j['id']}/trace").json()["id"])
    assert t["status"] == "done", t["error"]
    assert client.get("/api/model").json()["fingerprint"] == edited["fingerprint"]
    comp = client.get(f"/api/jobs/{t['id']}/result").json()
    assert comp["kind"] == "Comparison" and comp["view"]["type"] == "compare"
    assert len(comp["view"]["figures"]) == 2 and comp["view"]["figures"][0]["data"]
    assert "model fingerprint" in comp["summary"]  # the two traces ran on different weights
    r = client.post(f"/api/jobs/{j['id']}/revert").json()
    assert r["reverted"] and r["fingerprint"] == before == weights_fingerprint(wmodel.model)
    assert client.post(f"/api/jobs/{j['id']}/trace").status_code == 409
    assert client.get("/api/model").json()["applied"] == []
    assert client.post(f"/api/jobs/{j['id']}/revert").status_code == 409
    lens = wait(client, client.post("/api/jobs", json={"op": "lens", "config": {"prompt": "the"}}).json()["id"])
    assert client.post(f"/api/jobs/{lens['id']}/revert").status_code == 409


def test_rerun_and_compare(client):
    a = wait(client, client.post("/api/jobs", json={"op": "lens", "config": {"prompt": "the tower is"}}).json()["id"])
    b = wait(client, client.post("/api/jobs", json={"op": "lens", "config": {"prompt": "the city of"}}).json()["id"])
    r = wait(client, client.post(f"/api/jobs/{a['id']}/rerun").json()["id"])
    verdict = client.get(f"/api/jobs/{r['id']}/result").json()
    assert verdict["kind"] == "Reproduction" and "reproduces" in verdict["summary"]
    c = wait(client, client.post("/api/compare", json={"a": a["id"], "b": b["id"]}).json()["id"])
    comp = client.get(f"/api/jobs/{c['id']}/result").json()
    assert comp["kind"] == "Comparison" and "prompt" in comp["summary"]
    p = wait(client, client.post("/api/jobs", json={"op": "patch", "config": PATCH}).json()["id"])
    r = client.post("/api/compare", json={"a": a["id"], "b": p["id"]})
    assert r.status_code == 400 and "same operation" in r.json()["error"]


def test_circuit_and_steering_views(client, wmodel):
    import uncover as uc

    cfg = {**PATCH, "edges": 10}
    j = wait(client, client.post("/api/jobs", json={"op": "circuit", "config": cfg}).json()["id"])
    view = client.get(f"/api/jobs/{j['id']}/result").json()["view"]
    ref = uc.run("circuit", wmodel, **cfg)
    assert view["type"] == "circuit" and view["n_edges"] == 10
    assert [e[:2] for e in view["edges"]] == [list(e[:2]) for e in ref.top(10).edges()]
    scores = [abs(e[2]) for e in view["edges"]]
    assert scores == sorted(scores, reverse=True)
    cfg = {
        "prompts": ["the tower is"],
        "positive": "good",
        "negative": "bad",
        "layer": 1,
        "scale": 5.0,
        "max_new_tokens": 3,
    }
    j = wait(client, client.post("/api/jobs", json={"op": "steer", "config": cfg}).json()["id"])
    view = client.get(f"/api/jobs/{j['id']}/result").json()["view"]
    ref = uc.run("steer", wmodel, **cfg)
    assert {k: view[k] for k in ("prompts", "plain", "steered", "kl", "score_plain", "score_steered")} == {
        "prompts": ref.prompts,
        "plain": ref.plain,
        "steered": ref.steered,
        "kl": ref.kl,
        "score_plain": ref.score_plain,
        "score_steered": ref.score_steered,
    }
    assert view["kl"] > 0 and view["neutral_tokens"] == ref.neutral_tokens > 0


# ---- the prompt view ---------------------------------------------------------------------------------
def test_prompt_view_agrees_with_the_library(client, wmodel):
    import uncover as uc

    prompt = "the tower is in the city of"
    v = client.post("/api/prompt", json={"prompt": prompt, "k": 5}).json()
    assert v["tokens"] == wmodel.to_str_tokens(prompt)
    p = torch.softmax(wmodel(prompt)[0, -1], -1)
    assert [t[1] for t in v["top"]] == p.topk(5).indices.tolist()
    lens = uc.logit_lens(wmodel, prompt, positions=None, k=1)
    torch.testing.assert_close(torch.tensor(v["lens"]["probs"]), lens.top_probs[0, :, :, 0], atol=1e-4, rtol=0)
    assert v["lens"]["tokens"] == [[pos[0] for pos in layer] for layer in lens.top_tokens[0]]
    pats = uc.attention_patterns(wmodel, prompt, layer=2)
    torch.testing.assert_close(torch.tensor(v["attention"][2]), pats.patterns, atol=1e-3, rtol=0)
    top2 = p.topk(2).indices.tolist()
    assert [v["dla"]["answer_id"], v["dla"]["wrong_id"]] == top2
    dla = uc.direct_logit_attribution(wmodel, prompt, top2[0], top2[1])
    assert v["dla"]["logit_diff"] == pytest.approx(float(dla.logit_diff[0]), abs=1e-4)
    assert sum(v["dla"]["contributions"]) == pytest.approx(v["dla"]["logit_diff"], abs=1e-3)
    last = client.post("/api/prompt", json={"prompt": prompt, "k": 5, "lens_positions": "last"}).json()
    assert last["lens"]["positions"] == [6] and last["lens"]["probs"] == [[row[-1]] for row in v["lens"]["probs"]]
    assert client.post("/api/prompt", json={"prompt": prompt, "lens_positions": "x"}).status_code == 400
    chosen = client.post("/api/prompt", json={"prompt": prompt, "answer": "paris", "wrong": "rome"}).json()
    assert chosen["dla"]["answer"] == "paris" and chosen["dla"]["wrong"] == "rome"


def test_prompt_view_runs_one_forward_pass_on_the_servers_threads(app, client, wmodel):
    """Tokens, lens, attention and DLA share one forward; the worker uses the process's torch threads."""
    calls = []
    handle = wmodel.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        assert client.post("/api/prompt", json={"prompt": "the tower is in the city of"}).status_code == 200
    finally:
        handle.remove()
    assert len(calls) == 1
    assert app.state.server.worker.call(torch.get_num_threads) == torch.get_num_threads()
