"""``sae steer``: one SAE latent steered, clamped or ablated, against references computed by hand on a tiny model.

The reference adds ``Δf · W_dec[latent]`` to the activation at the SAE's hook with a plain hook (``Δf``: ``-f``
for ablate, ``scale`` for steer, ``scale - f`` for clamp, with ``f`` the SAE's own code of the activation).
"""

from __future__ import annotations

import json

import pytest
import torch

import uncover as uc
from tests.serve.conftest import word_model
from uncover.core.errors import UsageError
from uncover.ops.registry import get_operation
from uncover.sae.steer_latent import LatentSteerResult, steer_latent

PROMPT = "the tower is in paris and"
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def wm():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield word_model()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sae(wm):
    from uncover.sae import TopKSAE
    from uncover.sae.base import SAEConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        s = TopKSAE(SAEConfig(d_in=wm.cfg.d_model, d_sae=48, architecture="topk", k=4, hook_name=HOOK))
        with torch.no_grad():
            s.W_dec.mul_(200.0)  # decoder rows large enough to move a tiny model's output visibly
    return s.eval()


def _active_latent(wm, sae) -> tuple[int, torch.Tensor]:
    _, cache = wm.run_with_cache(PROMPT, names=[HOOK])
    with torch.no_grad():
        f = sae.encode(cache[HOOK][0])  # [pos, d_sae]
    latent = int(f[-1].argmax())
    return latent, f[:, latent]


def _reference(wm, sae, latent: int, delta, new_tokens: int) -> tuple[torch.Tensor, str]:
    """Next-token probabilities and greedy generation with ``delta(f)`` · W_dec[latent] added by hand.

    The hook sees the unedited activation (nothing upstream of it changes), so ``f`` is the SAE's code of the
    activation it receives; generation reruns the whole prefix at each step (no KV cache, unlike ``generate``).
    """
    row = sae.W_dec[latent].detach()

    def fn(x, hp):
        f = sae.encode(x)[..., latent]  # [batch, pos]
        return x + delta(f)[..., None] * row

    ids = wm.to_tokens(PROMPT)
    n = ids.shape[1]
    with torch.no_grad(), wm.hooks([(HOOK, fn)]):
        probs = torch.softmax(wm(ids)[0, -1], -1)
        for _ in range(new_tokens):
            ids = torch.cat([ids, wm(ids)[0, -1].argmax().view(1, 1)], 1)
    return probs, wm.tokenizer.decode(ids[0, n:], skip_special_tokens=True)


def test_scale_zero_is_the_plain_model(wm, sae):
    latent, _ = _active_latent(wm, sae)
    r = steer_latent(wm, sae, PROMPT, latent, "steer", 0.0, max_new_tokens=5, k=5)
    plain = torch.softmax(wm(PROMPT)[0, -1].float(), -1)
    assert r.generation_after == r.generation_before == wm.generate(PROMPT, max_new_tokens=5)
    torch.testing.assert_close(r.probs_after, plain[r.ids], atol=1e-5, rtol=0)
    torch.testing.assert_close(r.probs_before, plain[r.ids], atol=1e-6, rtol=0)
    assert r.kl < 1e-6 and r.ids[:5] == plain.topk(5).indices.tolist()


@pytest.mark.parametrize("mode, scale", [("ablate", 0.0), ("steer", -6.0), ("clamp", 9.0)])
def test_edit_equals_adding_the_decoder_row_by_hand(wm, sae, mode, scale):
    latent, f = _active_latent(wm, sae)
    assert float(f[-1]) > 0  # the latent is live on the prompt, so ablating it changes something
    delta = {"ablate": lambda a: -a, "steer": lambda a: torch.full_like(a, scale), "clamp": lambda a: scale - a}[mode]
    ref_probs, ref_gen = _reference(wm, sae, latent, delta, 4)
    r = steer_latent(wm, sae, PROMPT, latent, mode, scale, max_new_tokens=4, k=6)
    assert r.ids[6:] == [i for i in ref_probs.topk(6).indices.tolist() if i not in r.ids[:6]]
    torch.testing.assert_close(r.probs_after, ref_probs[r.ids], atol=1e-5, rtol=0)
    torch.testing.assert_close(r.activation, f, atol=1e-5, rtol=0)
    assert r.generation_after == ref_gen
    logp, logq = torch.log(torch.softmax(wm(PROMPT)[0, -1], -1)), torch.log(ref_probs)
    assert r.kl == pytest.approx(float((logp.exp() * (logp - logq)).sum()), rel=1e-4, abs=1e-6)
    assert r.kl > 1e-4  # the edit did something
    frame = r.to_frame()
    assert list(frame.columns) == ["token", "id", "prob_before", "prob_after", "change"]
    assert len(r.plot().data) == 3 and str(latent) in r.title


def test_config_refuses_and_checks_the_model(wm, tmp_path):
    op = get_operation("sae steer")
    for fields, msg in (
        ({"latent": -1}, "latent"),
        ({"latent": 1, "mode": "boost"}, "valid: ablate, steer, clamp"),
        ({"latent": 1, "scale": float("inf")}, "finite"),
        ({"latent": 1, "max_new_tokens": -1}, ">= 0"),
        ({"latent": 1, "path": tmp_path / "none"}, "path"),
    ):
        with pytest.raises(UsageError, match=msg):
            op.config(prompt=PROMPT, **fields)
    from uncover.sae import TopKSAE
    from uncover.sae.base import SAEConfig

    TopKSAE(SAEConfig(d_in=wm.cfg.d_model, d_sae=48, architecture="topk", k=4, hook_name=HOOK)).save(tmp_path / "s")
    with pytest.raises(UsageError, match=r"latent \(--latent\) 48 is out of range; this SAE has latents 0..47"):
        op.config(prompt=PROMPT, latent=48, path=tmp_path / "s").check_model(wm)


def test_operation_round_trip_and_cli(wm, sae, tmp_path, monkeypatch, capsys):
    from uncover.cli.main import main

    sae.save(tmp_path / "s")
    latent, _ = _active_latent(wm, sae)
    r = uc.run("sae steer", wm, prompt=PROMPT, latent=latent, mode="ablate", path=tmp_path / "s", max_new_tokens=3)
    assert isinstance(r, LatentSteerResult) and r.provenance.operation == "sae steer"
    direct = steer_latent(wm, sae, PROMPT, latent, "ablate", 10.0, max_new_tokens=3)
    torch.testing.assert_close(r.probs_after, direct.probs_after)
    back = uc.load_result(r.save(tmp_path / "r.safetensors"))
    assert back.generation_after == r.generation_after and torch.equal(back.activation, r.activation)
    assert "latent" in r.to_html() and json.loads(r.to_json())["kind"] == "LatentSteerResult"
    monkeypatch.setattr(uc, "load", lambda name=None, **kw: wm)
    with pytest.raises(SystemExit) as e:
        main(
            [
                "sae",
                "steer",
                PROMPT,
                "--latent",
                str(latent),
                "--mode",
                "ablate",
                "--sae",
                str(tmp_path / "s"),
                "-n",
                "3",
                "--json",
            ]
        )
    assert e.value.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "LatentSteerResult" and out["provenance"]["config"]["mode"] == "ablate"
    assert [row["prob_after"] for row in out["records"]] == pytest.approx(r.probs_after.tolist(), abs=1e-6)
    with pytest.raises(SystemExit) as e:
        main(["sae", "steer", PROMPT, "--latent", "99", "--sae", str(tmp_path / "s")])
    assert e.value.code == 2 and "out of range" in capsys.readouterr().err
