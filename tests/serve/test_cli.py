"""``uncover serve``: the command's options, the printed URL with its token, and the warning for a non-loopback host."""

from __future__ import annotations

import re

import pytest


@pytest.fixture
def started(monkeypatch, wmodel):
    """Run ``uncover serve`` without a model load or a real server: record what uvicorn would run."""
    import uvicorn

    import uncover.hooks.hooked as hooked

    calls: dict = {}
    monkeypatch.setattr(hooked, "load", lambda name=None, **kw: calls.setdefault("load", (name, kw)) and wmodel)

    def fake_run(app, **kw):
        calls.update(app=app, **kw)
        calls.get("during", lambda a: None)(app)  # what a client sees while the server runs

    monkeypatch.setattr(uvicorn, "run", fake_run)
    return calls


def run(args: list[str]) -> None:
    from uncover.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["serve", *args])
    assert e.value.code in (0, None)


def test_serve_binds_loopback_and_prints_the_url_with_its_token(started, capsys, tmp_path):
    run(["--port", "8999", "--results", str(tmp_path / "res")])
    out, err = capsys.readouterr()
    assert started["host"] == "127.0.0.1" and started["port"] == 8999
    token = started["app"].state.server.token
    assert re.search(rf"http://127\.0\.0\.1:8999/\?token={re.escape(token)}$", out, re.M)  # the token may end in - or _
    assert len(token) >= 24 and "warning" not in err
    assert (tmp_path / "res").is_dir() and started["load"][0] is None


def test_another_host_warns_and_is_allowed(started, capsys, tmp_path):
    from fastapi.testclient import TestClient

    seen = {}

    def during(app):
        c = TestClient(app, base_url="http://0.0.0.0:8765")
        seen["ok"] = c.get(f"/api/model?token={app.state.server.token}").status_code
        seen["bad"] = c.get("/api/model?token=other").status_code

    started["during"] = during
    run(["--host", "0.0.0.0", "--model", "some/model", "--results", str(tmp_path)])
    _, err = capsys.readouterr()
    assert "warning: serving on 0.0.0.0" in err and started["load"][0] == "some/model"
    assert seen == {"ok": 200, "bad": 401}


def test_a_fresh_token_per_launch(started, tmp_path):
    run(["--results", str(tmp_path)])
    first = started["app"]
    run(["--results", str(tmp_path)])
    assert first.state.server.token != started["app"].state.server.token


def test_bad_port_is_a_usage_error(capsys):
    from uncover.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--port", "0"])
    assert e.value.code == 2
