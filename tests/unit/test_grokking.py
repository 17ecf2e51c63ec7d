"""Grokking: data, model (HookedModel on it), Fourier identities, resume equality, measures."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from uncover.core.errors import UncoverError
from uncover.dynamics.grokking import (
    GrokConfig,
    GrokConfigError,
    build_model,
    hooked,
    load_run,
    make_data,
    phases,
    progress_measures,
    train,
)
from uncover.dynamics.grokking.fourier import (
    excluded_logits,
    fourier_basis,
    freq_norms,
    gini,
    key_directions,
    neuron_frequencies,
    restricted_logits,
)
from uncover.dynamics.grokking.groups import discrete_log, group_pairs, op_basis, pair_coordinate, primitive_root
from uncover.dynamics.grokking.model import last_logits, last_position_mlp

TINY = dict(p=7, d_model=16, n_heads=2, d_mlp=32, eval_every=5, snapshot_every=5)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_data_matches_python_arithmetic(op):
    p = 11
    d = make_data(GrokConfig(p=p, op=op))
    for (a, b, eq), y in zip(d.tokens.tolist(), d.labels.tolist()):
        assert eq == p
        want = {"+": a + b, "-": a - b, "*": a * b, "/": a * pow(b, p - 2, p) if b else None}[op]
        assert want is not None and y == want % p
    n = p * p - (p if op == "/" else 0)
    assert len(d.labels) == n and int(d.is_train.sum()) == round(0.3 * n)
    assert torch.equal(make_data(GrokConfig(p=p, op=op)).is_train, d.is_train)
    assert not torch.equal(make_data(GrokConfig(p=p, op=op, seed=1)).is_train, d.is_train)


def test_config_validation_names_choices():
    with pytest.raises(GrokConfigError, match="valid: \\+, -, \\*, /"):
        GrokConfig(op="^")
    with pytest.raises(GrokConfigError, match="prime"):
        GrokConfig(p=100)
    with pytest.raises(GrokConfigError, match="divisible"):
        GrokConfig(d_model=10, n_heads=4)
    with pytest.raises(GrokConfigError, match="valid: .*weight_decay"):
        GrokConfig().replace(wd=0.0)
    assert issubclass(GrokConfigError, UncoverError)


def test_model_shape_and_hooked_decomposition_sums_to_logits():
    cfg = GrokConfig(**TINY)
    model = build_model(cfg)
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()  # untied
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules()) == 0
    hm = hooked(model, cfg)
    assert (hm.cfg.n_layers, hm.cfg.n_heads, hm.cfg.d_model, hm.cfg.d_mlp, hm.cfg.d_vocab) == (1, 2, 16, 32, 8)
    x = make_data(cfg).tokens[:10]
    logits, cache = hm.run_with_cache(x)
    stack = cache.decompose_resid()
    assert stack.labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out"]
    resid = stack.tensor.sum(0)
    torch.testing.assert_close(resid, cache["blocks.0.hook_resid_post"], atol=1e-6, rtol=0)
    torch.testing.assert_close(resid @ hm.W_U, logits, atol=1e-5, rtol=0)
    # per-head outputs plus the output bias give the attention output
    heads = cache.head_results(0).sum(-2) + model.transformer.h[0].attn.c_proj.bias
    torch.testing.assert_close(heads, cache["blocks.0.hook_attn_out"], atol=1e-6, rtol=0)
    # neurons through W_out reproduce the MLP output
    mlp = cache["blocks.0.mlp.hook_post"] @ hm.W_out(0) + model.transformer.h[0].mlp.c_proj.bias
    torch.testing.assert_close(mlp, cache["blocks.0.hook_mlp_out"], atol=1e-5, rtol=0)


def test_last_position_mlp_keeps_answer_logits_and_gradients():
    cfg = GrokConfig(**TINY)
    model = build_model(cfg)
    x, y = make_data(cfg).train
    grads = []
    for fast in (False, True):
        model.zero_grad()
        if fast:
            with last_position_mlp(model):
                lg = last_logits(model, x, cfg.p)
        else:
            lg = last_logits(model, x, cfg.p)
        F.cross_entropy(lg, y).backward()
        grads.append((lg.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("p", [7, 113])
def test_fourier_basis_is_orthonormal(p):
    b, names = fourier_basis(p)
    assert b.shape == (p, p) and len(names) == p
    torch.testing.assert_close(b @ b.T, torch.eye(p, dtype=b.dtype), atol=1e-10, rtol=0)
    x = torch.arange(p, dtype=torch.float64)
    # a pure frequency-3 embedding has all its norm at frequency 3
    emb = torch.stack([torch.cos(2 * math.pi * 3 * x / p + 0.4), 2 * torch.sin(2 * math.pi * 3 * x / p)], 1)
    norms = freq_norms(b @ emb)
    assert int(norms.argmax()) == 3
    torch.testing.assert_close(norms.pow(2).sum(), emb.pow(2).sum())  # Parseval


def test_gini_matches_pairwise_definition():
    x = torch.rand(40, dtype=torch.float64)
    pairwise = (x[:, None] - x[None, :]).abs().sum() / (2 * len(x) ** 2 * x.mean())
    assert gini(x) == pytest.approx(float(pairwise), abs=1e-12)


def _synthetic_logits(p: int, keys: list[int], others: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)[:, None]
    b = torch.arange(p, dtype=torch.float64).repeat(p)[:, None]
    c = torch.arange(p, dtype=torch.float64)[None, :]
    key = sum(torch.cos(2 * math.pi * k * (a + b - c) / p) for k in keys)
    other = sum(0.7 * torch.sin(2 * math.pi * k * (a - 2 * b + c) / p + 0.3) for k in others)
    return key, other + 0.5 * c  # the c-only term is constant over pairs


def test_restricted_and_excluded_decompose_synthetic_logits():
    p, keys = 13, [2, 5]
    key, other = _synthetic_logits(p, keys, [1, 4])
    logits = key + other
    d = key_directions(p, keys)
    r, e = restricted_logits(logits, d), excluded_logits(logits, d)
    # the identity: restricted + excluded = logits + mean over pairs
    torch.testing.assert_close(r + e, logits + logits.mean(0, keepdim=True), atol=1e-10, rtol=0)
    # restricted keeps exactly the key part (plus the per-answer mean); excluded removes exactly it
    torch.testing.assert_close(r, key + logits.mean(0, keepdim=True), atol=1e-10, rtol=0)
    torch.testing.assert_close(e, other, atol=1e-10, rtol=0)
    # a reference projection by least squares onto [const, cos, sin]
    design = torch.cat([torch.ones(p * p, 1, dtype=torch.float64), d], 1)
    ls = design @ torch.linalg.lstsq(design, logits).solution
    torch.testing.assert_close(r, ls, atol=1e-9, rtol=0)
    # on a "perfect" model, restricted loss is at most the full loss and excluded loss is worse
    labels = (torch.arange(p).repeat_interleave(p) + torch.arange(p).repeat(p)) % p
    full = F.cross_entropy(5 * key, labels)
    assert F.cross_entropy(restricted_logits(5 * key, d), labels) <= full + 1e-9
    assert F.cross_entropy(excluded_logits(5 * key, d), labels) > full + 1.0


@pytest.mark.parametrize("p", [7, 31, 113])
def test_discrete_log_inverts_the_primitive_root(p):
    g, log = discrete_log(p)
    assert g == primitive_root(p) and int(log[0]) == -1
    for a in range(1, p):
        assert pow(g, int(log[a]), p) == a  # g^log(a) = a
    assert sorted(log[1:].tolist()) == list(range(p - 1))  # a bijection onto Z_{p-1}
    assert len({pow(g, k, p) for k in range(p - 1)}) == p - 1  # g generates Z_p^*
    # multiplication is addition of logarithms
    a, b = torch.arange(1, p).repeat_interleave(p - 1), torch.arange(1, p).repeat(p - 1)
    assert torch.equal(log[(a * b) % p], (log[a] + log[b]) % (p - 1))


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
@pytest.mark.parametrize("p", [7, 113])
def test_op_basis_is_orthonormal_and_sees_pure_frequencies(p, op):
    b = op_basis(p, op)
    assert b.matrix.shape == (p, p) and len(b.names) == p and b.n_freqs == (p + 1) // 2
    torch.testing.assert_close(b.matrix @ b.matrix.T, torch.eye(p, dtype=torch.float64), atol=1e-10, rtol=0)
    # a token embedding that is a pure frequency-3 wave of the group coordinate (and anything on token 0)
    x = b.coord.double()
    w = 2 * math.pi * 3 / b.order
    emb = torch.stack([torch.cos(w * x + 0.4), 2 * torch.sin(w * x)], 1)
    if op in ("*", "/"):
        emb[0] = torch.tensor([5.0, -1.0])  # token 0 is outside the group: frequency 0
    norms = freq_norms(b.matrix @ emb, b.freqs)
    torch.testing.assert_close(norms.pow(2).sum(), emb.pow(2).sum())  # Parseval
    rest = norms.clone()
    rest[[0, 3]] = 0
    assert float(rest.max()) < 1e-9 and norms[3] > 1.0
    if op in ("*", "/"):
        assert b.names[0] == "zero" and float(norms[0]) == pytest.approx(float(emb[0].norm()))


def _mult_logits(p: int, keys: list[int], others: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    g, log = discrete_log(p)
    inside = group_pairs(p, "*")
    la = log.repeat_interleave(p)[inside].double()[:, None]
    lb = log.repeat(p)[inside].double()[:, None]
    lc = log.double()[None, :]  # log 0 = -1: any value, the answer's axis is not projected
    n = p - 1
    key = sum(torch.cos(2 * math.pi * k * (la + lb - lc) / n) for k in keys)
    other = sum(0.7 * torch.sin(2 * math.pi * k * (la - 2 * lb + lc) / n + 0.3) for k in others)
    return key, other + 0.5 * lc


def test_restricted_and_excluded_decompose_multiplicative_logits():
    p, keys = 13, [2, 5]
    key, other = _mult_logits(p, keys, [1, 4])
    logits = key + other  # [(p-1)^2 pairs inside Z_p^*, p]
    d = key_directions(p, keys, "*")[group_pairs(p, "*")]
    torch.testing.assert_close(d.T @ d, torch.eye(4, dtype=torch.float64), atol=1e-10, rtol=0)
    r, e = restricted_logits(logits, d), excluded_logits(logits, d)
    mean = logits.mean(0, keepdim=True)
    torch.testing.assert_close(r + e, logits + mean, atol=1e-10, rtol=0)
    torch.testing.assert_close(r, key + mean, atol=1e-10, rtol=0)
    torch.testing.assert_close(e, other, atol=1e-10, rtol=0)
    design = torch.cat([torch.ones(len(d), 1, dtype=torch.float64), d], 1)  # least-squares reference
    torch.testing.assert_close(r, design @ torch.linalg.lstsq(design, logits).solution, atol=1e-9, rtol=0)
    # the directions are functions of the product: equal on pairs with equal a*b, zero off the group
    full = key_directions(p, keys, "*")
    assert torch.equal(full[~group_pairs(p, "*")], torch.zeros_like(full[~group_pairs(p, "*")]))
    prod = (torch.arange(p).repeat_interleave(p) * torch.arange(p).repeat(p)) % p
    for c in range(1, p):
        rows = full[(prod == c) & group_pairs(p, "*")]
        torch.testing.assert_close(rows, rows[:1].expand_as(rows), atol=1e-12, rtol=0)
    # "/" uses log a - log b; the Nyquist frequency (p-1)/2 has a cosine only
    s = pair_coordinate(p, "/")
    a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)
    inside = group_pairs(p, "/")
    assert torch.equal(s[inside], discrete_log(p)[1][(a * torch.tensor([pow(int(x), -1, p) if x else 0
                                                                        for x in range(p)])[b]) % p][inside])
    assert key_directions(p, [(p - 1) // 2], "/").shape == (p * p, 1)


def test_neuron_frequencies_find_planted_multiplicative_frequency():
    p = 13
    _, log = discrete_log(p)
    la, lb = log.double()[:, None], log.double()[None, :]
    acts = torch.stack([torch.relu(torch.cos(2 * math.pi * k * (la + lb) / (p - 1) + 0.2)) for k in (1, 4, 5)], -1)
    acts[0, :] = 0.3  # rows and columns of token 0 (a constant: frequency 0)
    acts[:, 0] = 0.3
    freq, fve = neuron_frequencies(acts, "*")
    assert freq.tolist() == [1, 4, 5] and (fve > 0.5).all()
    # the additive basis does not see them
    assert (neuron_frequencies(acts, "+")[1] < 0.5).all()


def test_neuron_frequencies_find_planted_frequency():
    p = 11
    a = torch.arange(p, dtype=torch.float64)
    acts = torch.stack([torch.relu(torch.cos(2 * math.pi * k * (a[:, None] + a[None, :]) / p + 0.2))
                        for k in (1, 4, 5)], -1)
    freq, fve = neuron_frequencies(acts)
    assert freq.tolist() == [1, 4, 5]
    assert (fve > 0.5).all()  # ReLU adds harmonics, but the planted frequency dominates


def test_resume_equals_uninterrupted(tmp_path):
    cfg = GrokConfig(**TINY, steps=20, checkpoint_every=10)
    whole = train(cfg, tmp_path / "whole", progress=False)
    train(cfg.replace(steps=10), tmp_path / "cut", progress=False)
    with pytest.raises(GrokConfigError, match="resume"):
        train(cfg, tmp_path / "cut", progress=False)  # refuses to overwrite a run
    with pytest.raises(GrokConfigError, match="lr changed"):
        train(cfg.replace(lr=0.5), tmp_path / "cut", resume=True, progress=False)
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False)
    for (k, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert whole.rows == resumed.rows
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 5, 10, 15, 20]
    assert pd.read_csv(tmp_path / "cut" / "metrics.csv")["step"].tolist() == [0, 5, 10, 15, 20]
    loaded = load_run(tmp_path / "cut")
    assert loaded.snapshot_steps() == [0, 5, 10, 15, 20]
    assert torch.equal(loaded.model.lm_head.weight, whole.model.lm_head.weight)


def test_training_lowers_loss_and_measures_run():
    cfg = GrokConfig(**TINY, steps=60, lr=1e-2)
    run = train(cfg, progress=False)
    m = run.metrics
    assert m.train_loss.iloc[-1] < 0.8 * m.train_loss.iloc[0]
    r = progress_measures(run, key_freqs=[1, 2])
    assert r.measures.step.tolist() == run.snapshot_steps()
    # the stored model states are the ones trained: full_loss on all pairs agrees with the metrics
    last = r.measures.iloc[-1]
    n_tr, n_te = int(run.data.is_train.sum()), int((~run.data.is_train).sum())
    want = (m.train_loss.iloc[-1] * n_tr + m.test_loss.iloc[-1] * n_te) / (n_tr + n_te)
    assert last.full_loss == pytest.approx(want, rel=1e-4)
    html = r.to_html()
    assert "Grokking: a + b mod 7" in html and json.loads(r.to_json())["key_freqs"] == [1, 2]



@pytest.mark.parametrize("op", ["*", "/"])
def test_multiplicative_measures_align_with_training_metrics(op):
    cfg = GrokConfig(**{**TINY, "p": 11}, op=op, steps=20, lr=1e-2)
    run = train(cfg, progress=False)
    r = progress_measures(run, max_snapshots=2)
    m, last = run.metrics, r.measures.iloc[-1]
    assert r.measures.step.tolist() == [0, 20] and len(r.key_freqs) >= 1
    assert all(1 <= k <= (cfg.p - 1) // 2 for k in r.key_freqs)
    # full_loss (every pair of the data, "/" has no b = 0) agrees with the training metrics
    n_tr, n_te = int(run.data.is_train.sum()), int((~run.data.is_train).sum())
    want = (m.train_loss.iloc[-1] * n_tr + m.test_loss.iloc[-1] * n_te) / (n_tr + n_te)
    assert last.full_loss == pytest.approx(want, rel=1e-4)
    for col in ("restricted_loss", "excluded_loss", "embed_gini", "logit_gini"):
        assert math.isfinite(last[col]), col
    assert m.embed_gini.notna().all() and len(r.embed_norms) == (cfg.p + 1) // 2
    assert f"Grokking: a {op} b mod 11" in r.to_html()


def test_phases_on_a_grokking_like_curve():
    steps = list(range(0, 1100, 100))
    train_acc = [0.0, 0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    test_acc = [0.0, 0.0, 0.0, 0.01, 0.02, 0.05, 0.3, 0.8, 0.995, 1, 1]
    ph = phases(pd.DataFrame({"step": steps, "train_acc": train_acc, "test_acc": test_acc}))
    assert ph == {"memorization": (0, 200), "circuit formation": (200, 600), "cleanup": (600, 800)}
    ph = phases(pd.DataFrame({"step": steps, "train_acc": train_acc, "test_acc": [0.0] * 11}))
    assert ph == {"memorization": (0, 200), "circuit formation": (200, 1000)}


def test_cli_grok_json_resume_and_usage_error(tmp_path, capsys):
    from uncover.cli.main import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["grok", "--p", "7", "--steps", "10", "--eval-every", "5", "--out", str(out), "--json"])
    assert e.value.code == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "GrokkingResult" and [r["step"] for r in d["records"]] == [0, 5, 10]
    with pytest.raises(SystemExit) as e:
        main(["grok", "--resume", str(out), "--steps", "15", "--json"])
    assert e.value.code == 0
    assert json.loads(capsys.readouterr().out)["records"][-1]["step"] == 15
    with pytest.raises(SystemExit) as e:
        main(["grok", "--p", "7", "--steps", "4", "--eval-every", "2", "--compare", "fractions", "--json"])
    assert e.value.code == 0
    assert [r["train_frac"] for r in json.loads(capsys.readouterr().out)["records"]] == [0.2, 0.3, 0.5, 0.7]
    with pytest.raises(SystemExit) as e:
        main(["grok", "--op", "^"])
    assert e.value.code == 2 and "valid: +, -, *, /" in capsys.readouterr().err


@pytest.mark.parametrize("op", ["*", "/"])
def test_cli_grok_multiplicative_with_html(tmp_path, capsys, op):
    from uncover.cli.main import main

    html = tmp_path / "grok.html"
    with pytest.raises(SystemExit) as e:
        main(["grok", "--p", "11", "--op", op, "--steps", "10", "--eval-every", "5", "--lr", "1e-2",
              "--init-scale", "2", "--html", str(html), "--json"])
    assert e.value.code == 0, capsys.readouterr().err
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "GrokkingResult" and d["config"]["op"] == op and d["config"]["init_scale"] == 2.0
    rec = d["records"][-1]
    assert rec["step"] == 10 and math.isfinite(rec["restricted_loss"]) and math.isfinite(rec["excluded_loss"])
    assert len(d["key_freqs"]) >= 1 and len(d["embed_norms"]) == 6
    text = html.read_text()
    assert f"Grokking: a {op} b mod 11" in text and "over discrete logs, period 10" in text


def test_config_default_init_is_nanda_like_and_old_runs_keep_gpt2_init():
    assert GrokConfig().init_scale == 4.0
    old = json.loads(GrokConfig(p=53).to_json())
    del old["init_scale"]  # a run saved before the field existed was trained at GPT-2's init
    assert GrokConfig.from_json(json.dumps(old)).init_scale == 1.0
    assert GrokConfig.from_json(GrokConfig(p=53).to_json()).init_scale == 4.0
