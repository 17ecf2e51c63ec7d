"""The workbench's prompt view on the embedded model: the known fact shows where it should."""

from __future__ import annotations

import pytest

from tests.serve.conftest import TOKEN


@pytest.mark.e2e
def test_prompt_view_of_a_fact_on_the_embedded_model(real, tmp_path, one_thread):
    from fastapi.testclient import TestClient

    from uncover.serve import create_app

    app = create_app(real, tmp_path, token=TOKEN)
    try:
        c = TestClient(app, base_url="http://127.0.0.1:8765", headers={"X-Uncover-Token": TOKEN})
        v = c.post("/api/prompt", json={"prompt": "The Eiffel Tower is in the city of", "wrong": " Rome"}).json()
    finally:
        app.state.server.worker.close()
    assert v["top"][0][0] == " Paris" and v["top"][0][2] > 0.5
    assert v["lens"]["tokens"][-1][-1] == " Paris"  # the final layer's top token at the last position
    assert all(row[-1] != " Paris" for row in v["lens"]["tokens"][:15])  # the answer appears late
    d = v["dla"]
    assert (d["answer"], d["wrong"]) == (" Paris", " Rome") and d["logit_diff"] > 1
    assert sum(d["contributions"]) == pytest.approx(d["logit_diff"], abs=1e-2)
    rows = v["attention"][5][0]
    assert all(abs(sum(r) - 1) < 1e-2 for r in rows)  # each query's pattern sums to one
    assert all(x == 0 for i, r in enumerate(rows) for x in r[i + 1 :])  # causal
