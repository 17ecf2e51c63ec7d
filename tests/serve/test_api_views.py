"""The workbench's features view, latent edits, cells of path/attribution patching and causal tracing, and an
edit's paraphrases and neighbours, checked against references computed another way on a tiny word model."""

from __future__ import annotations

import pytest
import torch

PROMPT = "the tower is in paris"


@pytest.fixture
def saved_sae(app, wmodel):
    """A random TopK SAE on the word model's layer-1 residual, saved as ``mysae`` in the results folder."""
    from uncover.sae import TopKSAE
    from uncover.sae.base import SAEConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        sae = TopKSAE(SAEConfig(d_in=wmodel.cfg.d_model, d_sae=48, architecture="topk", k=4,
                                hook_name="blocks.1.hook_resid_post"))
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
    for bad, msg in (({"path": "../x"}, "outside the results folder"), ({"path": "nosae"}, "SAE"),
                     ({"path": "mysae", "k": 0}, "k must be")):
        r = client.post("/api/features", json={"prompt": PROMPT, **bad})
        assert r.status_code == 400 and msg in r.json()["error"]


def test_ablating_and_steering_a_latent_moves_the_activation_by_its_decoder_row(client, wmodel, saved_sae):
    v = client.post("/api/features", json={"prompt": PROMPT, "path": "mysae"}).json()
    latent, _, _ = v["top"][0]
    hook = "blocks.1.hook_resid_post"
    _, cache = wmodel.run_with_cache(PROMPT, names=[hook])
    with torch.no_grad():
        f = saved_sae.encode(cache[hook][0])[:, latent]  # [pos]
    for mode, value, delta in (("ablate", 0.0, -f), ("steer", 7.5, torch.full_like(f, 7.5))):
        e = client.post("/api/features/latent", json={"prompt": PROMPT, "path": "mysae", "latent": latent,
                                                      "mode": mode, "value": value, "max_new_tokens": 2}).json()

        def fn(x, hp, delta=delta):  # reference: add Δf · W_dec[latent] by hand
            return x + delta[None, :, None] * saved_sae.W_dec[latent].detach()

        with torch.no_grad():
            base = torch.softmax(wmodel(PROMPT)[0, -1], -1)
            with wmodel.hooks([(hook, fn)]):
                ref = torch.softmax(wmodel(PROMPT)[0, -1], -1)
        assert e["activation"] == pytest.approx(f.tolist(), abs=1e-3)
        assert [t[2] for t in e["after"]["top"]] == pytest.approx(ref.topk(8).values.tolist(), abs=1e-4)
        assert [t[2] for t in e["before"]["top"]] == pytest.approx(base.topk(8).values.tolist(), abs=1e-4)
        assert isinstance(e["after"]["generation"], str) and isinstance(e["before"]["generation"], str)
    r = client.post("/api/features/latent", json={"prompt": PROMPT, "path": "mysae", "latent": 48})
    assert r.status_code == 400 and "latent must be" in r.json()["error"]
