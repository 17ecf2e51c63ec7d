"""The workbench's features view, latent edits (the ``sae steer`` operation), cells of path/attribution patching
and causal tracing, and an edit's paraphrases and neighbours, checked against references computed another way on a
tiny word model."""

from __future__ import annotations

import pytest
import torch

from tests.serve.conftest import wait

PROMPT = "the tower is in paris"


@pytest.fixture
def saved_sae(app, wmodel):
    """A random TopK SAE on the word model's layer-1 residual, saved as ``mysae`` in the results folder."""
    from uncover.sae import TopKSAE
    from uncover.sae.base import SAEConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        sae = TopKSAE(
            SAEConfig(d_in=wmodel.cfg.d_model, d_sae=48, architecture="topk", k=4, hook_name="blocks.1.hook_resid_post")
        )
    sae.save(app.state.server.results / "mysae")
    return sae


def test_features_per_token_are_the_sae_code_at_its_hook(client, wmodel, saved_sae):
    from uncover.sae.attach import attach_sae

    v = client.post("/api/features", json={"prompt": PROMPT, "path": "mysae", "k": 4}).json()
    with torch.no_grad(), attach_sae(wmodel, saved_sae) as att:
        wmodel(PROMPT)
    f = att["hook_sae_acts_post"][0]  # [pos, d_sae], recorded by the attached SAE in the forward pass
    assert v["hook"] == "blocks.1.hook_resid_post" and v["d_sae"] == 48 and len(v["latents"]) == f.shape[0]
    for pos, row in enumerate(v["latents"]):
        active = {int(i) for i in f[pos].nonzero().flatten()}
        assert {i for i, _ in row} == active  # TopK with k=4: every active latent is listed
        for i, a in row:
            assert a == pytest.approx(float(f[pos, i]), abs=1e-3)
    best = f[1:].max(0).values
    assert v["top"][0][1] == pytest.approx(float(best.max()), abs=1e-3)
    for bad, msg in (
        ({"path": "../x"}, "outside the results folder"),
        ({"path": "nosae"}, "SAE"),
        ({"path": "mysae", "k": 0}, "k must be"),
    ):
        r = client.post("/api/features", json={"prompt": PROMPT, **bad})
        assert r.status_code == 400 and msg in r.json()["error"]


def test_steering_a_latent_is_the_sae_steer_operation_and_moves_the_activation_by_its_decoder_row(
    client, wmodel, saved_sae
):
    v = client.post("/api/features", json={"prompt": PROMPT, "path": "mysae"}).json()
    latent, _, _ = v["top"][0]
    hook = "blocks.1.hook_resid_post"
    _, cache = wmodel.run_with_cache(PROMPT, names=[hook])
    with torch.no_grad():
        f = saved_sae.encode(cache[hook][0])[:, latent]  # [pos]
    for mode, scale, delta in (("ablate", 0.0, -f), ("steer", 7.5, torch.full_like(f, 7.5))):
        job = _job(
            client,
            "sae steer",
            {"prompt": PROMPT, "path": "mysae", "latent": latent, "mode": mode, "scale": scale, "max_new_tokens": 2},
        )
        res = client.get(f"/api/jobs/{job}/result").json()
        e = res["view"]

        def fn(x, hp, delta=delta):  # reference: add Δf · W_dec[latent] by hand
            return x + delta[None, :, None] * saved_sae.W_dec[latent].detach()

        with torch.no_grad():
            base = torch.softmax(wmodel(PROMPT)[0, -1], -1)
            with wmodel.hooks([(hook, fn)]):
                ref = torch.softmax(wmodel(PROMPT)[0, -1], -1)
        assert res["kind"] == "LatentSteerResult" and e["type"] == "latent" and e["mode"] == mode
        assert e["activation"] == pytest.approx(f.tolist(), abs=1e-3)
        ids = [row[1] for row in e["shown"]]
        assert [row[3] for row in e["shown"]] == pytest.approx(ref[ids].tolist(), abs=1e-4)
        assert [row[2] for row in e["shown"]] == pytest.approx(base[ids].tolist(), abs=1e-4)
        assert set(ref.topk(8).indices.tolist()) <= set(ids) and set(base.topk(8).indices.tolist()) <= set(ids)
        assert isinstance(e["generation_after"], str) and isinstance(e["generation_before"], str)
    r = client.post("/api/jobs", json={"op": "sae steer", "config": {"prompt": PROMPT, "path": "mysae", "latent": 48}})
    assert r.status_code == 400 and "out of range" in r.json()["error"]
    r = client.post("/api/jobs", json={"op": "sae steer", "config": {"prompt": PROMPT, "path": "../x", "latent": 1}})
    assert r.status_code == 400 and "outside the results folder" in r.json()["error"]
    assert client.post("/api/features/latent", json={"prompt": PROMPT}).status_code in (404, 405)  # no special view


PAIR = {"clean": "the tower is in paris", "corrupt": "the tower is in rome", "answer": "paris", "wrong": "rome"}


def _job(client, op, config):
    j = wait(client, client.post("/api/jobs", json={"op": op, "config": config}).json()["id"])
    assert j["status"] == "done", j
    return j["id"]


def test_cells_of_path_patching_attribution_patching_and_causal_tracing(client, wmodel):
    from uncover.hooks.interventions import Replace

    # path patching: the cell's one-sender run with plain hooks gives the grid's (batched, staged) value
    for receivers in (["logits"], ["L2H0.q", "L2H1.v"]):
        jid = _job(client, "path", {**PAIR, "receivers": receivers, "receiver_positions": [-1]})
        grid = client.get(f"/api/jobs/{jid}/result").json()["view"]["grid"]
        for index in ([0, 1], [1, 3]):
            c = client.post(f"/api/jobs/{jid}/cell", json={"index": index}).json()
            assert c["recomputed"] == pytest.approx(c["value"], abs=1e-3)
            assert c["value"] == pytest.approx(grid[index[0]][index[1]], abs=1e-3)
            assert sum(p for *_, p in c["patched"]["top"]) <= 1.0
    r = client.post(f"/api/jobs/{jid}/cell", json={"index": [2, 0]})  # a receiver's layer: not a sender
    assert r.status_code == 400 and "not swept" in r.json()["error"]
    # attribution patching: the cell is the exact patch behind the estimate
    jid = _job(client, "attribute", PAIR)
    view = client.get(f"/api/jobs/{jid}/result").json()["view"]
    assert view["type"] == "patch" and view["per"] == "pos"
    c = client.post(f"/api/jobs/{jid}/cell", json={"index": [1, 4]}).json()
    _, cache = wmodel.run_with_cache(PAIR["clean"], names=["blocks.1.hook_resid_pre"])
    with (
        torch.no_grad(),
        wmodel.intervene([Replace("blocks.1.hook_resid_pre", positions=(4,), source=cache["blocks.1.hook_resid_pre"])]),
    ):
        p = torch.softmax(wmodel(PAIR["corrupt"])[0, -1], -1)
    a, w = wmodel.to_single_token("paris"), wmodel.to_single_token("rome")
    assert c["patched"]["tracked"] == pytest.approx([float(p[a]), float(p[w])], abs=1e-4)
    assert c["value"] == pytest.approx(view["grid"][1][4], abs=1e-3)
    # causal tracing: restoring one cell under the trace's own noise gives the grid's indirect effect
    cfg = {
        "prompt": "the tower is in the city of",
        "subject": "the tower",
        "answer": "paris",
        "kind": "all",
        "samples": 3,
        "window": 2,
    }
    jid = _job(client, "trace", cfg)
    view = client.get(f"/api/jobs/{jid}/result").json()["view"]
    assert view["type"] == "trace" and set(view["grids"]) == {"hidden", "mlp", "attn"}
    for kind, index in (("hidden", [0, 1]), ("mlp", [1, 2]), ("attn", [2, 1]), ("hidden", [2, 6])):
        c = client.post(f"/api/jobs/{jid}/cell", json={"index": index, "kind": kind}).json()
        assert c["recomputed"] == pytest.approx(c["value"], abs=1e-4), (kind, index)
        assert c["value"] == pytest.approx(view["grids"][kind][index[0]][index[1]], abs=1e-4)
    clean = torch.softmax(wmodel("the tower is in the city of")[0, -1], -1)
    assert c["source"]["tracked"][0] == pytest.approx(float(clean[wmodel.to_single_token("paris")]), abs=1e-4)
    r = client.post(f"/api/jobs/{jid}/cell", json={"index": [0, 1], "kind": "nope"})
    assert r.status_code == 400 and "kind must be" in r.json()["error"]


def test_an_edits_paraphrases_and_neighbours_before_and_after(client, wmodel):
    paras, neigh = ["the tower is in", "we went to the tower in"], ["big ben is in the city of", "mary is in"]
    objects = [wmodel.to_single_token(o) for o in ("paris", " london")]

    def logps() -> list[list[float]]:  # reference: log p(object | prompt) from the last position's logits
        with torch.no_grad():
            return [
                [float(torch.log_softmax(wmodel(p)[0, -1].float(), -1)[o]) for o in objects]
                for p in ["the tower is in the city of", *paras, *neigh]
            ]

    want_before = logps()
    cfg = {
        "prompt": "the tower is in the city of",
        "subject": "the tower",
        "target": " london",
        "method": "rome",
        "layer": 1,
        "mom2_samples": 300,
        "gen_tokens": 0,
    }
    jid = _job(client, "edit", cfg)
    edited = client.get("/api/model").json()["fingerprint"]
    want_after = logps()
    g = client.post(
        f"/api/jobs/{jid}/generalisation", json={"paraphrases": paras, "neighbours": neigh, "true": "paris"}
    ).json()
    assert client.get("/api/model").json()["fingerprint"] == edited  # the edit is back on, bit for bit
    assert g["true"] == "paris" and g["new"] == " london" and len(g["rows"]) == 2 * 5
    for stage, want in (("before", want_before), ("after", want_after)):
        rows = [r for r in g["rows"] if r["stage"] == stage]
        assert [r["metric"] for r in rows] == ["efficacy", "paraphrase", "paraphrase", "neighbourhood", "neighbourhood"]
        got = [v for r in rows for v in (r["logp_true"], r["logp_new"])]
        assert got == pytest.approx([v for pair in want for v in pair], abs=1e-4)
        for r in rows:
            assert r["success"] == ((r["logp_new"] > r["logp_true"]) != (r["metric"] == "neighbourhood"))
    assert g["scores"]["after"]["efficacy"] == 1.0  # the edit took
    r = client.post(f"/api/jobs/{jid}/generalisation", json={})
    assert r.status_code == 400 and "give paraphrases" in r.json()["error"]
    client.post(f"/api/jobs/{jid}/revert")
    assert client.post(f"/api/jobs/{jid}/generalisation", json={"paraphrases": paras}).status_code == 409
