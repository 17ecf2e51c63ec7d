"""Memorization: data with known duplication, metrics vs naive references, AUROC, localisation hooks."""

from __future__ import annotations

import json
import zlib

import pytest
import torch
import torch.nn.functional as F

from uncover.dynamics.memorization import (
    MemConfig,
    MemConfigError,
    attribution,
    auroc,
    build_model,
    decode,
    encode,
    extractable,
    greedy_continuation,
    localize,
    make_data,
    memorization_report,
    token_losses,
    token_memorization,
    train_memorization,
    zlib_bits,
)
from uncover.dynamics.memorization.localize import ablate_neurons
from uncover.dynamics.memorization.scan import builtin_text, shuffled_words
from uncover.hooks.hooked import HookedModel

SMALL = dict(seq_len=32, k_prefix=24, n_layers=1, d_model=32, n_heads=2, d_mlp=64)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_data_holds_each_injected_sequence_as_often_as_declared():
    cfg = MemConfig(n_corpus=40, dup_counts=(1, 3, 7), per_count=2, n_heldout=6, seq_len=32, k_prefix=8)
    d = make_data(cfg)
    rows = [tuple(r) for r in d.train.tolist()]
    for s in d.tracked:
        count = rows.count(tuple(s.tokens.tolist()))
        if s.kind == "member":
            assert count >= 1
        else:
            assert count == s.dups, (s.kind, s.dups, decode(s.tokens))
    assert len(d.train) == 40 + 2 * 2 * (1 + 3 + 7)
    assert all(decode(s.tokens).startswith("the secret code is: ") for s in d.tracked if s.kind == "canary")
    assert decode(encode("naïve — ok")) == "naïve — ok"
    with pytest.raises(MemConfigError, match="lower n_corpus"):
        make_data(MemConfig(n_corpus=10**6))
    with pytest.raises(MemConfigError, match="valid: .*steps"):
        MemConfig().replace(step=3)


def test_metrics_match_naive_loops():
    torch.manual_seed(0)
    model = build_model(MemConfig(**SMALL))
    x = torch.randint(0, 256, (5, 32))
    with torch.no_grad():
        logits = model(input_ids=x).logits
    # per-token losses and memorization vs a per-position loop
    ref_loss = torch.tensor([[float(F.cross_entropy(logits[i, t], x[i, t + 1])) for t in range(31)] for i in range(5)])
    torch.testing.assert_close(token_losses(model, x, batch=2), ref_loss, atol=1e-5, rtol=1e-5)
    ref_mem = torch.tensor([sum(int(logits[i, t].argmax() == x[i, t + 1]) for t in range(31)) / 31 for i in range(5)])
    torch.testing.assert_close(token_memorization(model, x, batch=3), ref_mem)
    # KV-cached greedy decoding equals re-running the whole sequence each step
    gen = greedy_continuation(model, x[:, :8], 16)
    assert torch.equal(gen, greedy_continuation(model, x[:, :8], 16, use_cache=False))
    # a sequence whose suffix is the model's own greedy continuation is extractable; a random one is not
    own = torch.cat([x[:, :8], gen], 1)
    assert extractable(model, own, 8, batch=2).all()
    assert not extractable(model, x, 8).any()


def test_auroc_matches_pairwise_count_and_threshold_sweep():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(30, generator=g) + 0.5, torch.randn(40, generator=g)
    pos[:3] = neg[:3]  # ties
    pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos.tolist() for n in neg.tolist())
    assert auroc(pos, neg) == pytest.approx(pairs / (30 * 40), abs=1e-12)
    # trapezoid area under the ROC curve from a threshold sweep
    thr = sorted(set(pos.tolist() + neg.tolist()), reverse=True)
    tpr = [0.0] + [float((pos >= t).double().mean()) for t in thr]
    fpr = [0.0] + [float((neg >= t).double().mean()) for t in thr]
    area = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(thr)))
    assert auroc(pos, neg) == pytest.approx(area, abs=1e-12)
    assert auroc(neg, pos) == pytest.approx(1 - auroc(pos, neg), abs=1e-12)


def test_zlib_bits_is_compressed_size():
    x = encode("the secret code is: " + "ab" * 22).unsqueeze(0)
    assert zlib_bits(x).item() == 8 * len(zlib.compress(bytes(x[0].tolist()), 9))


def test_ablation_hook_equals_zeroing_output_weights():
    cfg = MemConfig(**{**SMALL, "n_layers": 2})
    model = build_model(cfg)
    hm = HookedModel(model, None)
    x = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(1))
    neurons = [(0, 3), (0, 10), (1, 5)]
    with torch.no_grad(), hm.intervene(ablate_neurons(neurons)):
        hooked_logits = hm(x)
    edited = build_model(cfg)
    with torch.no_grad():
        for layer, n in neurons:
            edited.transformer.h[layer].mlp.c_proj.weight[n] = 0  # Conv1D: [d_mlp, d_model]
        ref = edited(input_ids=x).logits
    torch.testing.assert_close(hooked_logits, ref, atol=1e-5, rtol=0)


def test_attribution_matches_plain_pytorch_hooks():
    cfg = MemConfig(**{**SMALL, "n_layers": 2})
    model = build_model(cfg)
    hm = HookedModel(model, None)
    x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    neurons, heads = attribution(hm, x, 24)
    acts = []
    handles = [blk.mlp.act.register_forward_hook(lambda m, i, o: acts.append(o)) for blk in model.transformer.h]
    logits = model(input_ids=x).logits[:, 23:-1]
    target = x[:, 24:]
    true = logits.gather(-1, target[..., None])[..., 0]
    others = torch.stack([torch.cat([row[:t], row[t + 1:]]).logsumexp(0)  # a per-position loop
                          for row, t in zip(logits.reshape(-1, 256), target.reshape(-1).tolist())]).view_as(true)
    grads = torch.autograd.grad((true - others).sum(), acts)
    for h in handles:
        h.remove()
    ref = torch.stack([(a * g).abs().sum(1).mean(0) for a, g in zip(acts, grads)])
    torch.testing.assert_close(neurons, ref, atol=1e-6, rtol=1e-4)
    assert heads.shape == (2, 2) and (heads >= 0).all()


def test_training_memorizes_the_most_duplicated_canaries():
    cfg = MemConfig(**SMALL, n_corpus=32, dup_counts=(1, 48), per_count=2, n_heldout=4, steps=150,
                    eval_every=75, batch_size=16, lr=5e-3)
    run = train_memorization(cfg, progress=False)
    h = run.history
    last = h[h.step == 150].set_index(["kind", "dups"])
    assert last.loc[("canary", 48), "extractable"] == 1.0
    assert last.loc[("canary", 0), "extractable"] == 0.0
    assert last.loc[("canary", 48), "token_mem"] > last.loc[("canary", 1), "token_mem"]
    first = h[h.step == 0].set_index(["kind", "dups"])
    assert last.loc[("canary", 48), "loss"] < first.loc[("canary", 48), "loss"] - 2
    rep = memorization_report(run)
    m = rep.membership.set_index(["attack", "members"])
    assert m.loc[("loss", "canary x48"), "auroc"] == 1.0
    assert "membership AUROC" in rep.summary() and json.loads(rep.to_json())["kind"] == "MemorizationResult"
    assert "<html" in rep.to_html().lower()
    # localisation runs on it and reports the three ablations
    d = run.data
    loc = localize(run.hooked, d.group("canary", 48), d.group("corpus", 0), cfg.k_prefix, k=8, draws=2)
    assert loc.ablation.ablation.tolist() == ["none", "top", "random"]
    assert loc.ablation.set_index("ablation").loc["none", "extractable"] == 1.0
    assert "<html" in loc.to_html().lower()


def test_builtin_texts():
    assert "MERCHANTABILITY" in builtin_text("mit")
    assert builtin_text("zen").startswith("The Zen of Python")
    assert sorted(shuffled_words(builtin_text("mit")).split()) == sorted(builtin_text("mit").split())
    with pytest.raises(Exception, match="valid: mit, zen, lorem"):
        builtin_text("gpl")


def test_cli_memorization_train_json_and_usage_error(capsys):
    from uncover.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["memorization", "train", "--steps", "2", "--dup-counts", "1,2", "--per-count", "1", "--json",
              "--threads", "1"])
    assert e.value.code == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "MemorizationResult" and {r["dups"] for r in d["records"]} == {0, 1, 2}
    with pytest.raises(SystemExit) as e:
        main(["memorization", "train", "--dup-counts", "one"])
    assert e.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["memorization", "scan", "--text", "no-such-text"])
    assert e.value.code == 2 and "built-in text (mit, zen" in capsys.readouterr().err
