"""Operations heads, neurons, knowledge-neurons, superposition and sae train|eval|show: configs, CLI parsing,
results on tiny models and their save/load round trips."""

from __future__ import annotations

import math

import pytest
import torch

import uncover as uc
from tests.conftest import tiny, tokens
from uncover.cli.generate import build_config
from uncover.core.errors import UncoverError, UsageError
from uncover.ops.registry import get_operation

pytestmark = pytest.mark.usefixtures("one_thread_no_grad")


def _cfg(name: str, **fields):
    return get_operation(name).config(**fields)


def _roundtrip(r, tmp_path):
    back = uc.load_result(r.save(tmp_path / "r.safetensors"))
    assert type(back) is type(r)
    return back


# ---- heads -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "match"), [
    ({}, "exactly one of"),
    ({"detect": "induction", "compose": "q"}, "exactly one of"),
    ({"detect": "inductoin"}, r"detect \(--detect\).*induction"),
    ({"compose": "x"}, "compose"),
    ({"pattern": "  "}, r"pattern \(--pattern\) is empty"),
    ({"pattern": "a b", "heads": ["5-2"]}, r"heads \(--head\): bad head '5-2'"),
    ({"pattern": "a b", "heads": ["5.2"], "layer": 3}, "not both"),
    ({"detect": "previous", "heads": ["5.2"]}, "give --pattern"),
    ({"detect": "previous", "seq_len": 1}, r"seq_len \(--seq-len\) must be >= 2"),
    ({"detect": "previous", "n": 0}, r"n \(--n\)"),
    ({"compose": "q", "top": 0}, r"top \(--top\)"),
    ({"pattern": "a b", "layer": -1}, r"layer \(--layer\)"),
])
def test_heads_config_refuses(fields, match):
    with pytest.raises(UsageError, match=match):
        _cfg("heads", **fields)


def test_heads_cli_parse_and_model_checks():
    op = get_operation("heads")
    cfg = build_config(op, {"pattern": "a b a b", "heads": ["L1H2", "0.3"], "top": 3})
    assert cfg.mode == "pattern" and cfg.heads == ["L1H2", "0.3"]
    m = tiny("llama")
    cfg.check_model(m)
    with pytest.raises(UsageError, match=r"valid layers: 0 \.\. 2"):
        _cfg("heads", pattern="x", heads=["7.0"]).check_model(m)
    with pytest.raises(UsageError, match=r"layer \(--layer\) 3 is out of range"):
        _cfg("heads", pattern="x", layer=3).check_model(m)
    with pytest.raises(UsageError, match="takes at most"):
        _cfg("heads", detect="induction", seq_len=40).check_model(tiny("gpt2"))  # 64 positions


def test_heads_modes_return_one_type(tmp_path):
    m = tiny("llama")
    op = get_operation("heads")
    det = uc.run("heads", m, detect="induction", n=2, seq_len=5, top=2)
    comp = uc.run("heads", m, compose="k", top=2)
    loss = uc.run("heads", m, detect="loss", n=2, seq_len=5)
    assert all(type(r) is op.result for r in (det, comp, loss))
    assert [type(r.result).__name__ for r in (det, comp, loss)] == ["HeadScores", "CompositionScores",
                                                                    "InductionLoss"]
    # the text lists the top heads after the summary; the JSON document is the inner result's
    assert det.cli_text().splitlines()[1].startswith("  L") and len(det.cli_text().splitlines()) == 3
    assert " -> " in comp.cli_text().splitlines()[-1] and len(loss.cli_text().splitlines()) == 1
    doc = det.to_dict()
    assert doc["kind"] == "HeadScores" and doc["provenance"]["operation"] == "heads"
    assert len(doc["records"]) == 3 * 4
    page = det.to_html(tmp_path / "h.html")
    assert "Provenance" in page and "Induction head scores" in page
    back = _roundtrip(det, tmp_path)
    assert torch.equal(back.result.scores, det.result.scores) and back.top == 2
    assert back.provenance.config["detect"] == "induction"
    assert torch.equal(_roundtrip(comp, tmp_path).result.scores.nan_to_num(), comp.result.scores.nan_to_num())


def test_heads_pattern_result_roundtrip(tmp_path):
    from uncover.heads.ops import HeadsResult
    from uncover.heads.patterns import attention_patterns

    m = tiny("qwen2")
    r = HeadsResult("pattern", attention_patterns(m, tokens(1, 6)[0], ["1.2", (0, 1)]), 4)
    back = _roundtrip(r, tmp_path)
    assert back.result.heads == [(1, 2), (0, 1)] and torch.equal(back.result.patterns, r.result.patterns)
    assert back.to_dict()["kind"] == "AttentionPatterns"


# ---- neurons -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "match"), [
    ({"layer": -1}, r"layer \(--layer\) must be >= 0"),
    ({"layer": 1, "neuron": []}, "at least 1"),
    ({"layer": 1, "neuron": [-2]}, r"neuron \(--neuron\) must be >= 0"),
    ({"layer": 1, "k": 0}, r"k \(--k\)"),
    ({"layer": 1, "blocks": 0}, r"blocks \(--blocks\)"),
    ({"layer": 1, "corpus": "/no/such/corpus.txt"}, "does not exist"),
])
def test_neurons_config_refuses(fields, match):
    with pytest.raises(UsageError, match=match):
        _cfg("neurons", **fields)


def test_neurons_config_corpus_format_and_model_checks(tmp_path):
    bad = tmp_path / "c.pdf"
    bad.write_text("x")
    with pytest.raises(UsageError, match=r"unknown format '\.pdf'; valid: \.txt, \.jsonl"):
        _cfg("neurons", layer=1, corpus=bad)
    good = tmp_path / "c.txt"
    good.write_text("some text")
    with pytest.raises(UsageError, match="--logits reads the weights"):
        _cfg("neurons", layer=1, corpus=good, logits=True)
    cfg = build_config(get_operation("neurons"), {"layer": 1, "neuron": "1, 2 3", "logits": True})
    assert cfg.neuron == [1, 2, 3]
    m = tiny("llama")
    cfg.check_model(m)
    with pytest.raises(UsageError, match=r"neuron \(--neuron\) 48 is out of range"):
        _cfg("neurons", layer=1, neuron=[48]).check_model(m)
    with pytest.raises(UsageError, match="vocabulary size 64"):
        _cfg("neurons", layer=1, k=65, logits=True).check_model(m)
    with pytest.raises(UsageError, match="comma-separated ints"):
        build_config(get_operation("neurons"), {"layer": 1, "neuron": "a,b"})


def test_neurons_modes_and_roundtrip(tmp_path):
    from uncover.neurons.ops import NeuronsResult
    from uncover.neurons.top import top_activations

    m = tiny("gpt2")
    r = uc.run("neurons", m, layer=1, neuron=[0, 5], k=4, logits=True)
    assert isinstance(r, NeuronsResult) and r.mode == "logits" and r.result.top_ids.shape == (2, 4)
    assert r.to_dict()["kind"] == "NeuronLogits"
    back = _roundtrip(r, tmp_path)
    assert torch.equal(back.result.top_values, r.result.top_values) and back.result.strs == r.result.strs
    ctx = NeuronsResult("contexts", top_activations(m, 1, [0, 5], tokens=tokens(4, 16), k=3))
    back = _roundtrip(ctx, tmp_path)
    assert torch.equal(back.result.values, ctx.result.values) and back.result.window == ctx.result.window
    assert "Top contexts" in back.to_html()


# ---- knowledge-neurons -------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "match"), [
    ({"prompts": [], "target": " Paris"}, "at least 1"),
    ({"prompts": ["ok", " "], "target": " Paris"}, "empty or whitespace"),
    ({"prompts": ["ok"], "target": ""}, r"target \(--target\) is empty"),
    ({"prompts": ["ok"], "target": "x", "threshold": 0}, r"threshold \(--threshold\) must be > 0"),
    ({"prompts": ["ok"], "target": "x", "threshold": math.nan}, "finite"),
    ({"prompts": ["ok"], "target": "x", "share": 1.5}, r"share \(--share\) must be <= 1"),
    ({"prompts": ["ok"], "target": "x", "steps": 0}, r"steps \(--steps\)"),
    ({"prompts": ["ok"], "target": "x", "layers": []}, "at least 1"),
    ({"prompts": ["ok"], "target": "x", "layers": [-1]}, r"layers \(--layers\) must be >= 0"),
])
def test_knowledge_neurons_config_refuses(fields, match):
    with pytest.raises(UsageError, match=match):
        _cfg("knowledge-neurons", **fields)


def test_knowledge_neurons_cli_parse_and_roundtrip(tmp_path):
    from uncover.neurons.knowledge import knowledge_effect, knowledge_neurons

    cfg = build_config(get_operation("knowledge-neurons"), {"prompts": ["a", "b"], "target": " x", "layers": "1,2"})
    assert cfg.layers == [1, 2] and cfg.prompts == ["a", "b"]
    assert build_config(get_operation("knowledge-neurons"), {"prompts": ["a"], "target": " x",
                                                             "layers": None}).layers is None
    m = tiny("llama")
    with torch.enable_grad():
        kn = knowledge_neurons(m, list(tokens(2, 6)), 7, layers=[1, 2], steps=2, threshold=0.5, share=0.5)
    assert kn.neurons and kn.effect is None
    kn.effect = knowledge_effect(m, kn, n_random=1)
    back = _roundtrip(kn, tmp_path)
    assert torch.equal(back.attributions, kn.attributions) and back.neurons == kn.neurons
    assert torch.equal(back.effect.suppressed, kn.effect.suppressed)
    page = back.to_html()
    assert "Knowledge neurons for" in page and "Suppressing and amplifying" in page


# ---- superposition -----------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "match"), [
    ({"features": 1}, r"features \(--features\) must be >= 2"),
    ({"dims": 0}, r"dims \(--dims\)"),
    ({"features": 4, "dims": 4}, "fewer than features"),
    ({"sparsity": [1.0]}, r"sparsity \(--sparsity\) must be < 1"),
    ({"sparsity": [-0.1]}, ">= 0"),
    ({"sparsity": []}, "at least 1"),
    ({"sparsity": [math.inf]}, "finite"),
    ({"decay": 0}, r"decay \(--decay\) must be > 0"),
    ({"steps": 0}, r"steps \(--steps\)"),
])
def test_superposition_config_refuses(fields, match):
    with pytest.raises(UsageError, match=match):
        _cfg("superposition", **fields)


def test_superposition_runs_without_a_model(tmp_path):
    op = get_operation("superposition")
    assert not op.needs_model
    cfg = build_config(op, {"features": 5, "dims": 2, "sparsity": "0, 0.9", "steps": 5, "seed": 3})
    assert cfg.sparsity == [0.0, 0.9]
    with torch.enable_grad():
        r = uc.execute(op, cfg)
    assert r.W.shape == (2, 2, 5) and r.provenance.seed == 3
    back = _roundtrip(r, tmp_path)
    assert torch.equal(back.W, r.W) and back.sparsity == [0.0, 0.9]


# ---- sae train / eval / show -------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "match"), [
    ({"hook": "logits"}, r"hook \(--hook\) logits cannot feed an SAE: the output logits"),
    ({"hook": "blocks.1.attn.hook_pattern"}, r"one value per \(query, key\) pair.*blocks\.1\.hook_resid_post"),
    ({"hook": "blocks.1.attn.hook_result"}, "cannot feed an SAE"),
    ({"batch_size": 0}, r"batch_size \(--batch-size\) must be >= 1"),
    ({"block_len": 1}, r"block_len \(--block-len\) must be >= 2"),
    ({"tokens": 0}, r"tokens \(--tokens\) must be >= 1"),
    ({"lr": math.nan}, r"lr \(--lr\) must be a finite number"),
    ({"lr": 0.0}, r"lr \(--lr\) must be > 0"),
    ({"arch": "gated"}, r"arch \(--arch\).*standard, topk, jumprelu"),
    ({"expansion": 0}, r"expansion \(--expansion\)"),
    ({"k": 0}, r"k \(--k\)"),
    ({"steps": 0}, r"steps \(--steps\)"),
    ({"sparsity_coeff": -1.0}, "sparsity_coeff"),
    ({"init_threshold": 0.0}, "init_threshold"),
    ({"bandwidth": math.inf}, "bandwidth"),
    ({"aux_coeff": -0.1}, "aux_coeff"),
    ({"checkpoint_every": -1}, "checkpoint_every"),
    ({"resample_every": -1}, "resample_every"),
    ({"tokens": 100, "batch_size": 128}, "less than one batch"),
    ({"resume": True}, "no checkpoint to resume from"),
])
def test_sae_train_config_refuses(fields, match, tmp_path):
    with pytest.raises(UsageError, match=match):
        _cfg("sae train", **{"out": tmp_path / "run", **fields})


def test_sae_train_config_paths_and_model_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        _cfg("sae train", out=tmp_path / "file")
    with pytest.raises(UsageError, match="does not exist"):
        _cfg("sae train", out=tmp_path / "no" / "run")
    ok = _cfg("sae train", out=tmp_path / "run", hook="blocks.1.attn.hook_z", expansion=2, k=64)
    m = tiny("llama")
    ok.check_model(m)  # d_in = n_heads * d_head = 32, d_sae = 64
    with pytest.raises(UsageError, match=r"k \(--k\) must be at most d_sae = expansion x d_in = 64"):
        ok.replace(k=65).check_model(m)
    with pytest.raises(UncoverError, match="unknown hook name 'blocks.9.hook_resid_post'"):
        ok.replace(hook="blocks.9.hook_resid_post").check_model(m)
    with pytest.raises(UsageError, match=r"block_len \(--block-len\) must be at most 64"):
        ok.replace(block_len=65).check_model(tiny("gpt2"))
    ckpt = tmp_path / "run" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    assert _cfg("sae train", out=tmp_path / "run", resume=True).resume
    cfg = build_config(get_operation("sae train"), {"out": tmp_path / "run", "arch": "jumprelu", "lr": 3e-4,
                                                   "overwrite": True})  # the folder holds a run now
    assert cfg.arch == "jumprelu" and cfg.hook == "blocks.15.hook_resid_post"


def _saved_sae(tmp_path, hook="blocks.1.hook_resid_post", d_in=32):
    from uncover.sae import SAEConfig, TopKSAE

    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=16, architecture="topk", k=4, hook_name=hook))
    sae.save(tmp_path / "run" / "sae")
    return sae


@pytest.mark.parametrize("name", ["sae eval", "sae show"])
def test_sae_eval_show_config(name, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        _cfg(name, path=tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither an SAE directory"):
        _cfg(name, path=tmp_path / "empty")
    with pytest.raises(UsageError, match="blocks"):
        _cfg(name, path=tmp_path / "empty", blocks=0)
    _saved_sae(tmp_path)
    m = tiny("llama")
    for p in (tmp_path / "run", tmp_path / "run" / "sae"):  # a run directory or the SAE directory itself
        _cfg(name, path=p).check_model(m)
    assert build_config(get_operation(name), {"path": None}).path is None  # the quick SAE
    _cfg(name).check_model(m)
    _saved_sae(tmp_path, d_in=48)
    with pytest.raises(UsageError, match="trained on another model"):
        _cfg(name, path=tmp_path / "run").check_model(m)
    _saved_sae(tmp_path, hook="blocks.7.hook_resid_post")
    with pytest.raises(UsageError, match="reads blocks.7.hook_resid_post, which this model lacks"):
        _cfg(name, path=tmp_path / "run").check_model(m)


def test_sae_show_features(tmp_path):
    _saved_sae(tmp_path)
    op = get_operation("sae show")
    cfg = build_config(op, {"path": tmp_path / "run", "feature": "3,4", "n_random": 2})
    assert cfg.feature == [3, 4] and cfg.n_random == 2
    cfg.check_model(tiny("llama"))
    with pytest.raises(UsageError, match=r"feature \(--feature\) 16 is out of range; this SAE has features 0..15"):
        cfg.replace(feature=[1, 16]).check_model(tiny("llama"))
    with pytest.raises(UsageError, match=r"n_random \(--random\)"):
        cfg.replace(n_random=0)
    with pytest.raises(UsageError, match=r"this SAE has features 0..127"):  # the quick SAE: 4 x d_model
        _cfg("sae show", feature=[128]).check_model(tiny("llama"))


def test_train_result_roundtrip(tmp_path):
    from uncover.sae import SAEConfig, TensorSource, TopKSAE, TrainConfig, train_sae

    sae = TopKSAE(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=2))
    with torch.enable_grad():
        r = train_sae(sae, TensorSource(torch.randn(256, 8), 32), TrainConfig(steps=4, checkpoint_every=0),
                      out_dir=tmp_path / "run", progress=False)
    back = _roundtrip(r, tmp_path)
    assert type(back.sae) is TopKSAE and back.sae.cfg == r.sae.cfg
    assert all(torch.equal(a, b) for a, b in zip(back.sae.state_dict().values(), r.sae.state_dict().values()))
    assert back.metrics == r.metrics and back.out_dir == r.out_dir
