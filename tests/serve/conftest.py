"""Fixtures of the workbench tests: a tiny word-level model, a test client, a live uvicorn server."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny, word_level_tokenizer

TOKEN = "test-token-123"
WORDS = (
    "the tower is in city of paris rome london big ben colosseum a movie was good bad it and to "
    "there then when we you i be at on for with this that mary john gave drink store went"
).split()
ARTIFACTS = Path(__file__).parent / "artifacts"


def word_tokenizer():
    return word_level_tokenizer(WORDS, decode_spaces=True)


def word_model():
    """A tiny random llama that reads lower-case words (offline, no files)."""
    m = tiny("llama")
    m.tokenizer = word_tokenizer()
    for c in (m.model.config, m.model.generation_config):
        c.bos_token_id = c.eos_token_id = 1
        c.pad_token_id = 0
    return m


@pytest.fixture(scope="module")
def wmodel():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield word_model()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def app(wmodel, tmp_path):
    from uncover.serve import create_app

    a = create_app(wmodel, tmp_path / "results", token=TOKEN)
    yield a
    a.state.server.worker.close()


@pytest.fixture
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="http://127.0.0.1:8765", headers={"X-Uncover-Token": TOKEN}) as c:
        yield c


def wait(client, job_id: str, timeout: float = 60.0) -> dict:
    """Poll a job until it leaves queued/running."""
    end = time.time() + timeout
    while time.time() < end:
        j = client.get(f"/api/jobs/{job_id}").json()
        if j["status"] not in ("queued", "running"):
            return j
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {j['status']} after {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server on 127.0.0.1 in a thread (stopped by :meth:`stop`)."""

    def __init__(self, model, results: Path) -> None:
        import uvicorn

        from uncover.serve import create_app

        self.port = free_port()
        self.app = create_app(model, results, token=TOKEN)
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = time.time() + 20
        while not self.server.started:
            if time.time() > end:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}/?token={TOKEN}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.server.worker.close()
