"""The workbench's attribution-graph view: the ``graph`` job's nodes and links, and the graph pruned at other
thresholds, against graphs built directly by the library with those thresholds on a tiny word model."""

from __future__ import annotations

import pytest
import torch

from tests.serve.conftest import wait

CONFIG = {
    "prompt": "the tower is in",
    "target": "paris",
    "transcoders": "tset",
    "max_feature_nodes": 24,
    "batch_size": 8,
}


def transcoder_set(model):
    """Random per-layer transcoders (skip connections, biases) for every layer of ``model``."""
    from uncover.transcoders import Transcoder, TranscoderConfig, TranscoderSet, mlp_in

    d = model.cfg.d_model
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ts = TranscoderSet(
            {
                la: Transcoder(
                    TranscoderConfig(d_in=d, d_sae=24, d_out=d, k=4, skip=True, hook_name=mlp_in(la)), seed=la
                )
                for la in range(model.cfg.n_layers)
            }
        )
        with torch.no_grad():
            for la in range(model.cfg.n_layers):
                ts.b_enc(la).normal_(0, 0.1)
                ts.W_skip(la).normal_(0, 0.05)
    return ts


@pytest.fixture
def tset(app, wmodel):
    ts = transcoder_set(wmodel)
    ts.save(app.state.server.results / "tset")
    return ts


def _reference(wmodel, ts, node_threshold=0.8, edge_threshold=0.98):
    from uncover.graphs.attribute import attribution_graph

    g = attribution_graph(
        wmodel,
        ts,
        CONFIG["prompt"],
        [CONFIG["target"]],
        max_feature_nodes=24,
        batch_size=8,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
    )
    ids = [g.node(i)["node_id"] for i in g.nodes()]
    links = [(g.node(s)["node_id"], g.node(t)["node_id"], w) for s, t, w in g.edges()]
    return ids, links


def _check(view, ids, links):
    assert [n["id"] for n in view["nodes"]] == ids
    assert view["n_links"] == len(links) and len(view["links"]) == len(links)
    got = {(s, t): w for s, t, w in view["links"]}
    assert set(got) == {(s, t) for s, t, _ in links}
    for s, t, w in links:
        assert got[(s, t)] == pytest.approx(w, abs=1e-5)


def test_graph_job_renders_nodes_links_and_reprunes_like_the_library(client, wmodel, tset):
    job = wait(client, client.post("/api/jobs", json={"op": "graph", "config": CONFIG}).json()["id"], timeout=120)
    assert job["status"] == "done", job
    res = client.get(f"/api/jobs/{job['id']}/result").json()
    view = res["view"]
    assert res["kind"] == "AttributionGraph" and view["type"] == "graph"
    assert view["tokens"] == wmodel.to_str_tokens(CONFIG["prompt"]) and view["targets"] == ["paris"]
    kinds = {n["kind"] for n in view["nodes"]}
    assert {"embedding", "logit"} <= kinds and (view["node_threshold"], view["edge_threshold"]) == (0.8, 0.98)
    _check(view, *_reference(wmodel, tset))
    # pruned again at other shares: the graph the library builds with those thresholds
    for nt, et in ((0.5, 0.9), (0.3, 0.6), (1.0, 1.0)):
        again = client.post(f"/api/jobs/{job['id']}/graph", json={"node_threshold": nt, "edge_threshold": et}).json()
        assert (again["node_threshold"], again["edge_threshold"]) == (nt, et)
        _check(again, *_reference(wmodel, tset, nt, et))
    small = client.post(f"/api/jobs/{job['id']}/graph", json={"node_threshold": 0.3, "edge_threshold": 0.6}).json()
    assert len(small["nodes"]) < len(client.post(f"/api/jobs/{job['id']}/graph", json={}).json()["nodes"])
    for bad in (
        '{"node_threshold": 0}',
        '{"node_threshold": 1.5}',
        '{"edge_threshold": "x"}',
        '{"edge_threshold": NaN}',
    ):
        r = client.post(f"/api/jobs/{job['id']}/graph", content=bad, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "must be a number in (0, 1]" in r.json()["error"], (bad, r.text)
    lens = wait(client, client.post("/api/jobs", json={"op": "lens", "config": {"prompt": "the"}}).json()["id"])
    assert client.post(f"/api/jobs/{lens['id']}/graph", json={}).status_code == 409
    assert client.post("/api/jobs/000000000000/graph", json={}).status_code == 404
