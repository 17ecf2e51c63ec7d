"""Pruning on tiny models: sparsity and N:M validity, Wanda vs a naive loop, SparseGPT vs naive OBS,
bit-exact revert, atomic failure, structured pruning vs zero ablation, attribution vs finite differences."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny, tokens
from uncover import Zero
from uncover.pruning import PruningError, magnitude_prune, prune, sparsegpt_prune, wanda_prune
from uncover.pruning.base import Pruning, linear_sites, parse_pattern
from uncover.pruning.calibrate import InputStats, sequential
from uncover.pruning.evaluate import perplexity, save_pretrained, sparsity_report
from uncover.pruning.sparsegpt import sparsegpt_weight
from uncover.pruning.structured import attribution_scores, prune_structured
from uncover.pruning.wanda import wanda_weight

pytestmark = pytest.mark.usefixtures("one_thread_no_grad")
CALIB = tokens(4, 16, seed=3)


def state(m):
    return {k: v.detach().clone() for k, v in m.model.state_dict().items()}


def same_state(m, ref) -> bool:
    return all(torch.equal(ref[k], v) for k, v in m.model.state_dict().items())


def correlated(n=256, d=16, out=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    x = x + 0.3 * x @ torch.randn(d, d, generator=g, dtype=dtype) / d**0.5  # correlated features
    # uneven feature scales (Wanda's case), in no particular order of columns
    x = x * torch.linspace(0.1, 3, d, dtype=dtype)[torch.randperm(d, generator=g)]
    return x, torch.randn(out, d, generator=g, dtype=dtype)


# ---- sparsity and patterns ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "gpt_neox"])
def test_wanda_exact_sparsity_per_row(kind):
    m = tiny(kind)
    p = wanda_prune(m, 0.25, tokens=CALIB)
    for s in linear_sites(m):
        zeros = (s.rows == 0).sum(1)
        assert torch.equal(zeros, torch.full_like(zeros, round(0.25 * s.rows.shape[1]))), s.path
    assert abs(p.overall_sparsity() - 0.25) < 0.01
    assert len(p.to_frame()) == len(linear_sites(m))


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_pattern_valid(method, pattern):
    m = tiny("llama")
    opts = {} if method == "magnitude" else {"tokens": CALIB}
    if method == "sparsegpt":
        opts["blocksize"] = 8
    prune(m, method, None, pattern, **opts)
    n, mm = parse_pattern(pattern)
    for s in linear_sites(m):
        nonzero = (s.rows != 0).reshape(s.rows.shape[0], -1, mm).sum(-1)
        assert (nonzero <= n).all(), s.path
        assert (nonzero == n).float().mean() > 0.99  # exactly N kept (weights are never exactly 0 otherwise)


def test_magnitude_and_sparsegpt_matrix_sparsity():
    m = tiny("llama")
    magnitude_prune(m, 0.6)
    for s in linear_sites(m):
        assert int((s.rows == 0).sum()) == round(0.6 * s.rows.numel())
        kept, gone = s.rows[s.rows != 0].abs().min(), 0  # every kept weight beats every pruned one
        assert kept > gone
    m = tiny("llama")
    sparsegpt_prune(m, 0.5, tokens=CALIB, blocksize=16)
    for s in linear_sites(m):
        assert abs(int((s.rows == 0).sum()) - 0.5 * s.rows.numel()) <= s.rows.shape[1] // 16 + 1


# ---- Wanda ------------------------------------------------------------------------------------
def test_wanda_mask_equals_naive_per_row():
    x, w = correlated(dtype=torch.float32)
    st = InputStats("norm")
    st.add(x[:100])
    st.add(x[100:])
    out = wanda_weight(w, st, 0.5)
    norms = [sum(float(x[t, j]) ** 2 for t in range(len(x))) ** 0.5 for j in range(x.shape[1])]
    for i in range(w.shape[0]):
        scores = [abs(float(w[i, j])) * norms[j] for j in range(w.shape[1])]
        drop = sorted(range(len(scores)), key=lambda j: scores[j])[: w.shape[1] // 2]
        expect = [0.0 if j in drop else float(w[i, j]) for j in range(w.shape[1])]
        assert out[i].tolist() == expect


def test_wanda_statistics_come_from_the_pruned_earlier_layers():
    """Layer 1's calibration norms equal those computed on a model whose layer 0 is already pruned."""
    m = tiny("llama")
    seen = {}
    orig = sequential

    def spy(model, toks, kind, fn):
        def wrap(layer, sites, stats):
            seen[layer] = {n: s.value.clone() for n, s in stats.items()}
            fn(layer, sites, stats)

        orig(model, toks, kind, wrap)

    import uncover.pruning.calibrate as cal

    cal.sequential, saved = spy, cal.sequential
    try:
        p = wanda_prune(m, 0.5, tokens=CALIB)
    finally:
        cal.sequential = saved
    # rerun the pruned model: layer 1's q_proj input = its ln1 output, all earlier layers pruned
    p_state = state(m)
    p.revert()
    params = dict(m.model.named_parameters())
    for k in p.originals:
        if k.startswith("model.layers.0."):
            params[k].copy_(p_state[k])
    _, cache = m.run_with_cache(CALIB, ["blocks.1.ln1.hook_normalized"])
    x = cache["blocks.1.ln1.hook_normalized"].reshape(-1, 32)
    torch.testing.assert_close(seen[1]["self_attn.q_proj"], (x * x).sum(0), rtol=1e-4, atol=1e-5)


# ---- SparseGPT --------------------------------------------------------------------------------
def naive_obs(w, h, mask, damp=0.01):
    """One row at a time, one column at a time, explicit inverses of the remaining Hessian."""
    h = h + damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    out = w.clone()
    for r in range(w.shape[0]):
        v = out[r].clone()
        for q in range(w.shape[1]):
            if mask[r, q]:
                hinv = torch.linalg.inv(h[q:, q:])
                v[q:] -= v[q] / hinv[0, 0] * hinv[0, :]
                v[q] = 0.0
        out[r] = v
    return out


@pytest.mark.parametrize("blocksize", [1, 5, 128])
def test_sparsegpt_equals_naive_obs(blocksize):
    x, w = correlated()
    h = x.T @ x
    out = sparsegpt_weight(w, h, 0.5, blocksize=blocksize)
    mask = out == 0
    assert int(mask.sum()) in range(w.numel() // 2 - 4, w.numel() // 2 + 5)
    torch.testing.assert_close(out, naive_obs(w, h, mask), rtol=0, atol=1e-10)
    # a fixed mask gives the same weights whatever the lazy block size
    torch.testing.assert_close(sparsegpt_weight(w, h, mask=mask, blocksize=3), out, rtol=0, atol=1e-10)


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_sparsegpt_reconstruction_beats_masks_without_update(pattern):
    x, w = correlated(d=32, out=8)
    st = InputStats("norm")
    st.add(x)
    err = lambda v: float(((x @ w.T - x @ v.T) ** 2).sum())  # noqa: E731
    sg = sparsegpt_weight(w, x.T @ x, 0.5, pattern, blocksize=8)
    wa = wanda_weight(w, st, 0.5, pattern)
    from uncover.pruning.magnitude import magnitude_weight

    mg = magnitude_weight(w, None, 0.5, pattern)
    assert err(sg) < err(wa) and err(sg) < err(mg)
    # and beats its own mask without the OBS update
    assert err(sg) < err(w.masked_fill(sg == 0, 0.0))


# ---- revert, save, failure ----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_revert_is_bit_exact(method):
    m = tiny("llama-gqa")
    ref = state(m)
    x = tokens()
    before = m(x)
    p = prune(m, method, 0.5, **({} if method == "magnitude" else {"tokens": CALIB}))
    assert not torch.equal(m(x), before)
    p.revert()
    assert same_state(m, ref) and torch.equal(m(x), before)
    p.revert()  # idempotent
    assert same_state(m, ref)


def test_save_load_reapplies(tmp_path):
    m = tiny("gpt2")
    ref = state(m)
    p = wanda_prune(m, 0.5, tokens=CALIB)
    pruned = state(m)
    path = p.save(tmp_path / "p.safetensors")
    p.revert()
    q = Pruning.load(path, m)
    assert same_state(m, pruned) and q.method == "wanda" and q.rows == p.rows
    q.revert()
    assert same_state(m, ref)
    with pytest.raises(PruningError, match="reverted"):
        q.save(tmp_path / "again.safetensors")


@pytest.mark.parametrize("bad", [dict(sparsity=1.0), dict(sparsity=-0.1), dict(sparsity="x"),
                                 dict(sparsity=None, pattern="4:2"), dict(sparsity=None, pattern="2-4"),
                                 dict(sparsity=0.3, pattern="2:4"), dict(sparsity=None, pattern="3:7"),
                                 dict(sparsity=None), dict(method="random")])
def test_bad_arguments_leave_model_untouched(bad):
    m = tiny("llama")
    ref = state(m)
    args = {"method": "wanda", "sparsity": 0.5, "pattern": None, **bad}
    with pytest.raises(PruningError) as e:
        prune(m, args.pop("method"), args.pop("sparsity"), args.pop("pattern"), tokens=CALIB)
    assert any(w in str(e.value) for w in ("valid", "[0, 1)", "divisible", "disagrees", "give"))
    assert same_state(m, ref)


def test_failure_half_way_restores(monkeypatch):
    m = tiny("llama")
    ref = state(m)
    import uncover.pruning.sparsegpt as sg

    real = sg.sparsegpt_weight
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 9:  # layer 1, after all of layer 0 was written
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(sg, "sparsegpt_weight", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        sparsegpt_prune(m, 0.5, tokens=CALIB)
    assert same_state(m, ref)


# ---- structured ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2"])
def test_pruned_heads_equal_zero_ablation(kind):
    m = tiny(kind)
    ref = state(m)
    x = tokens()
    scores = torch.arange(m.cfg.n_layers * m.cfg.n_heads, dtype=torch.float).view(m.cfg.n_layers, -1).flip(1)
    p = prune_structured(m, "heads", 0.5, scores=scores)  # the last 2 heads of each layer
    got = m(x)
    p.revert()
    assert same_state(m, ref)
    with m.intervene([Zero(f"blocks.{i}.attn.hook_z", heads=(2, 3)) for i in range(m.cfg.n_layers)]):
        want = m(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert p.options["pruned"][:2] == [[0, 2], [0, 3]]


def test_pruned_neurons_equal_zero_ablation():
    m = tiny("llama")
    x = tokens()
    scores = torch.rand(m.cfg.n_layers, m.cfg.d_mlp, generator=torch.Generator().manual_seed(0))
    p = prune_structured(m, "neurons", 0.25, scores=scores, scope="global")
    got = m(x)
    p.revert()
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    for i, j in p.options["pruned"]:
        chosen[i, j] = True
    assert int(chosen.sum()) == round(0.25 * scores.numel())
    assert scores[chosen].max() < scores[~chosen].min()

    def zero(layer):
        return lambda v, hp: v.masked_fill(chosen[layer], 0.0)

    want = m.run_with_hooks(x, [(f"blocks.{i}.mlp.hook_post", zero(i)) for i in range(m.cfg.n_layers)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_attribution_scores_match_finite_differences():
    m = tiny("llama", dtype=torch.float64)
    x = tokens(2, 8)
    scores = attribution_scores(m, x, "heads")
    _, cache = m.run_with_cache(x, ["blocks.1.attn.hook_z"])
    z = cache["blocks.1.attn.hook_z"]
    mean = z.mean((0, 1))

    def loss(eps):
        def fn(v, hp):
            v = v.clone()
            v[:, :, 2] += eps * (mean[2] - v[:, :, 2])
            return v

        logits = m.run_with_hooks(x, [("blocks.1.attn.hook_z", fn)])
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())

    eps = 1e-3  # Llama's RMSNorm computes in float32, so a tiny eps would only measure rounding
    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    torch.testing.assert_close(scores[1, 2].double(), fd.abs(), rtol=2e-3, atol=1e-8)


def test_structured_errors_and_activation_scorer():
    m = tiny("llama")
    ref = state(m)
    for kw in [dict(unit="layers"), dict(scorer="random"), dict(scope="model"), dict(sparsity=1.5)]:
        with pytest.raises(PruningError, match="valid|\\[0, 1\\)"):
            prune_structured(m, **{"unit": "heads", "sparsity": 0.5, "tokens": CALIB, **kw})
    assert same_state(m, ref)
    p = prune_structured(m, "heads", 0.25, scorer="activation", tokens=CALIB)
    assert p.options["scorer"] == "activation" and len(p.options["pruned"]) == m.cfg.n_layers


# ---- evaluation ------------------------------------------------------------------------------
def test_save_pretrained_reloads_same_logits(tmp_path):
    import transformers as T

    m = tiny("llama-gqa")
    wanda_prune(m, 0.5, tokens=CALIB)
    out = save_pretrained(m, tmp_path / "pruned")
    assert any(out.glob("*.safetensors"))
    again = T.AutoModelForCausalLM.from_pretrained(out).eval()
    x = tokens()
    torch.testing.assert_close(again(x).logits, m(x), rtol=0, atol=0)


def test_perplexity_and_sparsity_report():
    m = tiny("llama")
    x = tokens(3, 10)
    logits = m(x)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    assert abs(perplexity(m, x, batch_size=2) - float(nll.exp())) < 1e-3
    magnitude_prune(m, 0.3)
    rep = sparsity_report(m)
    f = rep.to_frame()
    assert len(f) == len(linear_sites(m)) and (abs(f.sparsity - 0.3) < 0.01).all()
    assert rep.plot().data and "zero" in rep.summary()
