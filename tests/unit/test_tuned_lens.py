"""Tuned lens on tiny random models: identity = logit lens, save/load, shape checks, training."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from safetensors.torch import save_file

from tests.conftest import tiny, tiny_config, tokens
from uncover import HookedModel
from uncover.core.errors import UncoverError
from uncover.lenses.logit_lens import logit_lens
from uncover.lenses.tuned_lens import TunedLens, tuned_lens
from uncover.lenses.tuned_lens_train import TrainConfig, lens_kl, train_tuned_lens


def randomize(lens: TunedLens, seed: int = 0, scale: float = 0.1) -> TunedLens:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return lens


def other_shape_model(layers: int = 2) -> HookedModel:
    c = tiny_config("llama")
    c.num_hidden_layers = layers
    torch.manual_seed(0)
    return HookedModel(T.AutoModelForCausalLM.from_config(c).eval(), tokenizer=None, name="tiny-llama-2l")


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gemma2", "gpt_neox"])
def test_identity_lens_equals_logit_lens_exactly(kind):
    m = tiny(kind)
    toks = tokens(batch=2, pos=7)
    lens = TunedLens.for_model(m)
    a = logit_lens(m, toks, positions=None, targets=[5, 9], k=4)
    b = tuned_lens(m, toks, lens, positions=None, targets=[5, 9], k=4)
    assert b.lens == "tuned" and b.title == "Tuned lens"
    for f in ("top_probs", "target_probs", "target_ranks", "kl_to_final"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.top_tokens == b.top_tokens and a.positions == b.positions and a.layers == b.layers


def test_translator_is_affine_residual_and_last_layer_untranslated():
    m = tiny("llama")
    lens = randomize(TunedLens.for_model(m))
    h = torch.randn(5, m.cfg.d_model)
    t = lens.translators[1]
    torch.testing.assert_close(lens.translate(1, h), h + h @ t.weight.T + t.bias)
    assert torch.equal(lens(1, h), lens.translate(1, h))
    with pytest.raises(IndexError, match="valid: 0 .. 2"):
        lens.translate(3, h)
    toks = tokens(batch=1, pos=6)
    a, b = logit_lens(m, toks, positions=None), tuned_lens(m, toks, lens, positions=None)
    assert torch.equal(a.top_probs[:, -1], b.top_probs[:, -1])  # the model's own output is not translated
    assert not torch.equal(a.top_probs[:, 1], b.top_probs[:, 1])
    assert b.kl_to_final[0, -1].abs().max() < 1e-5


def test_save_load_round_trip_is_bit_exact(tmp_path):
    m = tiny("gpt2")
    lens = randomize(TunedLens.for_model(m), seed=3)
    lens.info = {"train": {"steps": 7}, "kl_after": 0.5}
    path = lens.save(tmp_path / "sub" / "lens.safetensors")
    back = TunedLens.load(path, m)
    assert (back.model_name, back.n_layers, back.d_model, back.info) == ("tiny-gpt2", 3, 32, lens.info)
    sd, sd2 = lens.state_dict(), back.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    toks = tokens(batch=2, pos=5)
    assert torch.equal(tuned_lens(m, toks, lens).top_probs, tuned_lens(m, toks, back).top_probs)
    assert repr(back) == "TunedLens('tiny-gpt2', n_layers=3, d_model=32)"


def test_wrong_shape_and_bad_files_are_refused(tmp_path):
    m = tiny("llama")
    path = TunedLens.for_model(m).save(tmp_path / "lens.safetensors")
    other = other_shape_model(layers=2)
    with pytest.raises(UncoverError, match=r"made for 'tiny-llama' \(n_layers=3, d_model=32\), but model "
                                           r"'tiny-llama-2l' has n_layers=2, d_model=32; train one"):
        TunedLens.load(path, other)
    with pytest.raises(UncoverError, match="n_layers=2"):
        tuned_lens(other, tokens(batch=1, pos=4), TunedLens.load(path))
    with pytest.raises(UncoverError, match="n_layers=2"):
        lens_kl(other, tokens(batch=1, pos=4), TunedLens.load(path))
    with pytest.warns(UserWarning, match="same shape"):  # same shape, another model: allowed, with a warning
        TunedLens.load(path, tiny("mistral"))
    with pytest.raises(UncoverError, match="no such tuned lens file"):
        TunedLens.load(tmp_path / "missing.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UncoverError, match="not a tuned lens saved by uncover"):
        TunedLens.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(UncoverError, match="not a safetensors file"):
        TunedLens.load(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2"])
def test_training_lowers_kl_and_leaves_model_untouched(kind, capsys):
    m = tiny(kind)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    blocks = tokens(batch=16, pos=16, seed=2)
    base = lens_kl(m, blocks)
    assert base.shape == (m.cfg.n_layers,) and (base > 0).all()
    fit = train_tuned_lens(m, blocks, steps=0, progress=False)  # closed-form fit alone
    lens = train_tuned_lens(m, blocks, steps=40, lr=1e-3, batch_size=16)  # fit, then KL steps
    paper = train_tuned_lens(m, blocks, init="identity", steps=60, lr=1e-2, batch_size=16, progress=False)
    assert "tuned lens" in capsys.readouterr().err  # the progress bar is on stderr
    kl_fit, kl, kl_paper = lens_kl(m, blocks, fit), lens_kl(m, blocks, lens), lens_kl(m, blocks, paper)
    assert kl_fit.mean() < 0.8 * base.mean() and kl_paper.mean() < 0.8 * base.mean()
    assert kl.mean() < kl_fit.mean() and (kl < base).all()
    assert lens.info["kl_after"] < lens.info["kl_before"]
    assert lens.info["train"]["steps"] == 40 and lens.info["tokens"] == 256
    json.dumps(lens.info)
    assert all(torch.equal(before[k], v) for k, v in m.model.state_dict().items())
    assert all(p.grad is None for p in m.model.parameters())


def test_train_config_is_validated():
    assert TrainConfig().init == "lstsq"
    with pytest.raises(UncoverError, match="init must be one of lstsq, identity"):
        TrainConfig(init="zeros")
    with pytest.raises(UncoverError, match="lr must be a positive number"):
        TrainConfig(lr=0)
    with pytest.raises(UncoverError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    m = tiny("llama")
    with pytest.raises(UncoverError, match="steps must be >= 0"):
        train_tuned_lens(m, tokens(), steps=-1)
    with pytest.raises(UncoverError, match="no tokenizer"):
        train_tuned_lens(m, progress=False)
    with pytest.raises(UncoverError, match="LongTensor"):
        train_tuned_lens(m, torch.zeros(2, 3), progress=False)
