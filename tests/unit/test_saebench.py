"""SAEBench-style metrics against references computed another way, on tiny models and planted data."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import V, tiny
from uncover.sae import SAEConfig, TopKSAE
from uncover.sae.relu import ReLUSAE
from uncover.saebench import absorption, pooled_latents, sae_bench, sparse_probe, stratified_split, top_latents

pytestmark = pytest.mark.usefixtures("one_thread_no_grad")
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return tiny("llama")


def blocks(n=4, pos=12, seed=0):
    return torch.randint(3, V, (n, pos), generator=torch.Generator().manual_seed(seed))


def identity_sae(d: int) -> ReLUSAE:
    """relu(x) - relu(-x) = x: latents i and d + i carry the positive and negative part of coordinate i."""
    sae = ReLUSAE(SAEConfig(d_in=d, d_sae=2 * d, architecture="standard", hook_name=HOOK))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_identity_sae_recovers_all_loss_and_zero_sae_none(model):
    toks = blocks()
    ident = identity_sae(32)
    r = sae_bench(model, ident, toks, per_letter=0)
    assert r.metrics["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert r.metrics["fve"] == pytest.approx(1.0, abs=1e-5)
    # L0 and dead latents by hand, from the cached activations (position 0 is skipped, as in training)
    _, cache = model.run_with_cache(toks)
    x = cache[HOOK][:, 1:]
    f = torch.relu(torch.cat([x, -x], -1))
    assert r.metrics["l0"] == pytest.approx(float((f > 0).sum(-1).float().mean()))
    assert r.metrics["dead"] == pytest.approx(float(((f > 0).flatten(0, 1).sum(0) == 0).float().mean()))
    zero = identity_sae(32)
    with torch.no_grad():
        zero.W_dec.zero_()
    z = sae_bench(model, zero, toks, per_letter=0)
    assert z.metrics["loss_recovered"] == pytest.approx(0.0, abs=1e-5)
    assert z.metrics["ce_sae"] == pytest.approx(z.metrics["ce_zero"], abs=1e-5)
    assert set(z.to_frame()["metric"]) >= {"l0", "dead", "dense", "loss_recovered"}


def test_pooled_latents_are_token_means(model):
    sae = TopKSAE(SAEConfig(d_in=32, d_sae=48, architecture="topk", k=3, hook_name=HOOK))
    toks = blocks(5, 7)
    F, X = pooled_latents(model, sae, toks, batch_size=2)
    _, cache = model.run_with_cache(toks)
    assert torch.allclose(X, cache[HOOK][:, 1:].mean(1), atol=1e-5)
    assert torch.allclose(F, sae.encode(cache[HOOK][:, 1:]).mean(1), atol=1e-5)


def test_sparse_probing_finds_a_planted_latent():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 2
    F = torch.rand(120, 50, generator=g)
    F[:, 31] += 1.5 * y  # the one latent that carries the label (separable)
    tr, te = stratified_split(y, 0.3, seed=0)
    assert len(set(tr.tolist()) & set(te.tolist())) == 0 and len(tr) + len(te) == 120
    assert top_latents(F[tr], y[tr], 1) == [31]
    p = sparse_probe(F[tr], y[tr], F[te], y[te], k=1)
    assert p.latents == [31] and p.accuracy == 1.0
    noise = sparse_probe(torch.cat([F[tr, :31], F[tr, 32:]], 1), y[tr], torch.cat([F[te, :31], F[te, 32:]], 1), y[te],
                         k=1)
    assert noise.accuracy < 0.75  # without the planted latent: near chance


def planted(absorber: bool, n: int = 90, seed: int = 0):
    """Three letters along e0, e3, e4; letter 0's main latent (0) misses a third of its words, where latent 1
    (decoder (e0 + e1)/sqrt 2) fires instead when ``absorber``; latent 2 is noise on every word."""
    g = torch.Generator().manual_seed(seed)
    d, d_sae = 8, 6
    letters = torch.arange(n) % 3
    e = torch.eye(d)
    X = 0.05 * torch.randn(n, d, generator=g)
    X[letters == 0] += 3 * e[0]
    X[letters == 1] += 3 * e[3]
    X[letters == 2] += 3 * e[4]
    W = torch.stack([e[0], (e[0] + e[1]) / 2**0.5, e[2], e[3], e[4], e[5]])
    F = torch.zeros(n, d_sae)
    missed = (letters == 0) & (torch.arange(n) % 9 == 0)  # every third word of letter 0
    F[(letters == 0) & ~missed, 0] = 3.0
    if absorber:
        F[missed, 1] = 3 * 2**0.5
    F[:, 2] = 0.5
    F[letters == 1, 3] = 3.0
    F[letters == 2, 4] = 3.0
    return X, F, W, letters, missed


def test_absorption_counts_the_planted_absorber():
    X, F, W, letters, missed = planted(absorber=True)
    ab = absorption(X, F, W, letters, min_words=10)
    a = ab.letters[0]
    _, te = stratified_split(letters, 0.3, seed=0)
    test_a = te[letters[te] == 0]
    assert a.main == [0] and a.probe_correct == len(test_a)
    assert a.false_negatives == a.absorbed == int(missed[test_a].sum()) > 0
    assert a.absorbing == [1]
    assert [x.absorbed for x in ab.letters[1:]] == [0, 0]
    assert ab.rate == pytest.approx(a.absorbed / a.probe_correct / 3)
    none = absorption(*planted(absorber=False)[:4], min_words=10)
    assert none.letters[0].false_negatives == a.false_negatives and none.letters[0].absorbed == 0
