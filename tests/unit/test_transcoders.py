"""Transcoders on tiny models: SAELens format, the trainer adapter's exact folding, training, resume, evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny, tokens
from uncover.sae.train import TrainConfig
from uncover.transcoders import (
    CLTConfig,
    CrossLayerTranscoder,
    Trainable,
    Transcoder,
    TranscoderConfig,
    TranscoderSet,
    evaluate_transcoders,
    mlp_in,
    mlp_out,
    replaced_mlps,
    train_transcoders,
)
from uncover.transcoders.data import harvest_pairs


def test_saelens_transcoder_format(tmp_path):
    tc = Transcoder(TranscoderConfig(d_in=6, d_sae=10, d_out=4, k=3, skip=True, hook_name=mlp_in(2),
                                     hook_name_out=mlp_out(2)))
    cfg = json.loads((tc.save(tmp_path) / "cfg.json").read_text())
    assert cfg["architecture"] == "skip_transcoder" and (cfg["d_in"], cfg["d_sae"], cfg["d_out"]) == (6, 10, 4)
    assert cfg["hook_name_out"] == "blocks.2.hook_mlp_out" and cfg["hook_layer_out"] == 2
    from safetensors.torch import load_file

    w = load_file(tmp_path / "sae_weights.safetensors")
    assert {k: tuple(v.shape) for k, v in w.items()} == {"W_enc": (6, 10), "b_enc": (10,), "W_dec": (10, 4),
                                                         "b_dec": (4,), "W_skip": (4, 6)}
    back = Transcoder.load(tmp_path)
    x = torch.randn(5, 6)
    torch.testing.assert_close(back(x), tc(x))


@pytest.mark.parametrize("cross_layer", [False, True])
def test_trainable_folds_biases_and_scales_exactly(cross_layer):
    torch.manual_seed(0)
    if cross_layer:
        inner = CrossLayerTranscoder(CLTConfig(layers=[0, 1, 3], d_in=4, d_layer=8, d_out=5, activation="relu",
                                               skip=True))
        x = torch.randn(7, 3, 4)
    else:
        inner = Transcoder(TranscoderConfig(d_in=4, d_sae=8, d_out=5, activation="relu", skip=True))
        x = torch.randn(7, 4)
    t = Trainable(inner, out_scale=3.0)
    with torch.no_grad():
        for p in t.parameters():
            p.normal_(0, 0.5)
        inner.b_dec.zero_()
    scale = 0.37
    rows = torch.cat([x.flatten(1), torch.zeros(7, t.n_out)], -1) * scale
    # what the trained module predicts for scaled inputs, in the units of the raw output
    shifted = rows - t.b_dec
    xs = shifted[:, : t.n_in].view_as(x)
    pred_scaled = inner.reconstruct(xs) if cross_layer else inner(xs)
    pred = (pred_scaled + t.b_dec[t.n_in:].view(pred_scaled.shape[1:])) / (scale * 3.0)
    t.fold_scale(scale)
    out = t.export()
    raw = out.reconstruct(x) if cross_layer else out(x)
    torch.testing.assert_close(raw, pred, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cross_layer", [False, True])
def test_training_explains_the_mlps_and_evaluation_agrees(cross_layer, one_thread):
    m = tiny("llama")
    toks = tokens(16, 16)
    r = train_transcoders(m, [0, 1, 2], toks, TrainConfig(steps=100, log_every=50, lr=3e-3), expansion=2, k=8,
                          batch_size=64, skip=True, cross_layer=cross_layer)
    assert r.transcoders.kind == ("cross-layer" if cross_layer else "per-layer")
    ev = evaluate_transcoders(m, r.transcoders, tokens(4, 16, seed=5))
    assert min(ev.fve) > 0.4 and max(ev.l0) <= 8 * (3 if cross_layer else 1)
    # error-node size and FVE describe the same residual: FVE = 1 - err^2 * sum||y||^2 / sum||y - mean||^2
    _, y = harvest_pairs(m, [0, 1, 2], tokens(4, 16, seed=5))
    for i in range(3):
        yi = y[:, i].double()
        ratio = float(yi.pow(2).sum() / (yi - yi.mean(0)).pow(2).sum())
        assert ev.fve[i] == pytest.approx(1 - ev.error_norm[i] ** 2 * ratio, abs=1e-6)
    assert ev.ce_recovered == pytest.approx((ev.ce_zero - ev.ce_replaced) / (ev.ce_zero - ev.ce_clean))


def test_replaced_mlps_splice_the_transcoders_output(one_thread):
    m = tiny("gpt2")
    d = m.cfg.d_model
    ts = TranscoderSet({1: Transcoder(TranscoderConfig(d_in=d, d_sae=16, d_out=d, k=4, skip=True), seed=1)})
    ids = tokens(1, 6)
    _, cache = m.run_with_cache(ids, [mlp_in(1)])
    with torch.no_grad(), replaced_mlps(m, ts):
        _, spliced = m.run_with_cache(ids, [mlp_out(1)])
    torch.testing.assert_close(spliced[mlp_out(1)], ts.reconstruct({1: cache[mlp_in(1)]})[1])


def test_training_resumes_exactly(tmp_path, one_thread):
    m = tiny("llama")
    toks = tokens(8, 16)
    kw = {"expansion": 1, "k": 4, "batch_size": 32, "skip": True}
    full = train_transcoders(m, [1], toks, TrainConfig(steps=8, checkpoint_every=4, log_every=1), **kw)
    train_transcoders(m, [1], toks, TrainConfig(steps=4, checkpoint_every=4, log_every=1), out_dir=tmp_path, **kw)
    cfg = json.loads((tmp_path / "layer_1" / "checkpoint" / "trainer_state.json").read_text())
    assert cfg["state"]["step"] == 4
    resumed = train_transcoders(m, [1], toks, TrainConfig(steps=8, checkpoint_every=4, log_every=1),
                                out_dir=tmp_path, resume=True, **kw)
    a, b = full.transcoders.per_layer["1"], resumed.transcoders.per_layer["1"]
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in a.state_keys)
    assert TranscoderSet.load(tmp_path).layers == [1]
    import uncover as uc

    back = uc.load_result(resumed.save(tmp_path / "r.safetensors"))  # results hold their transcoder set
    assert all(torch.equal(v, back.transcoders.state_dict()[k]) for k, v in resumed.transcoders.state_dict().items())


def test_training_on_given_pairs_equals_training_on_tokens(one_thread):
    m = tiny("llama")
    toks = tokens(8, 12)
    kw = {"expansion": 1, "k": 4, "batch_size": 32, "skip": True}
    cfg = TrainConfig(steps=5, log_every=1)
    a = train_transcoders(m, [0, 2], toks, cfg, **kw).transcoders
    b = train_transcoders(m, [0, 2], toks, cfg, pairs=harvest_pairs(m, [0, 2], toks), **kw).transcoders
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    x, y = harvest_pairs(m, [0], toks)
    with pytest.raises(Exception, match=r"pairs must be two \[n_tokens, 2, d_model\]"):
        train_transcoders(m, [0, 2], toks, cfg, pairs=(x, y), **kw)
