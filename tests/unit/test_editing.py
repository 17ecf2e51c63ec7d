"""Editing on tiny models: ROME's closed form, MEMIT vs ROME, revert/save/load, atomic failure, validation, KN."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import V, tiny
from uncover.editing import EditError, Request, RomeConfig, rome
from uncover.editing.base import Edit, apply_deltas, down_proj, down_proj_path
from uncover.editing.evaluate import ngram_entropy, object_logprobs
from uncover.editing.kn import kn_edit
from uncover.editing.memit import memit, memit_update
from uncover.editing.rome import rank_one_update, subject_keys

WORDS = ("the tower is in city of paris rome london big ben colosseum a movie was good bad it and to "
         "there then when we you i be at on for with this that").split()
CFG = RomeConfig(steps=6, prefixes=1, prefix_tokens=3)


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    assert len(vocab) <= V
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def word_model(kind: str = "llama"):
    m = tiny(kind)
    m.tokenizer = word_tokenizer()
    for c in (m.model.config, m.model.generation_config):  # GPT-2's defaults name id 50256
        c.bos_token_id = c.eos_token_id = 1
        c.pad_token_id = 0
    return m


def snapshot(m) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.model.named_parameters()}


def same(m, snap) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in m.model.named_parameters())


def spd(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 2 * n, generator=g, dtype=torch.float64)
    return a @ a.T / (2 * n) + 0.1 * torch.eye(n, dtype=torch.float64)


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- closed forms ------------------------------------------------------------------------------
def test_rank_one_update_inserts_key_and_keeps_c_orthogonal_keys():
    g = torch.Generator().manual_seed(1)
    W, k, v = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((5, 8), (8,), (5,)))
    C = spd(8)
    d = rank_one_update(W, k, v, C)
    assert torch.allclose((W + d) @ k, v, atol=1e-10)
    assert torch.linalg.matrix_rank(d, rtol=1e-5) == 1
    u = torch.linalg.inv(C) @ k  # explicit inverse: another computation of C⁻¹k*
    for _ in range(5):
        r = torch.randn(8, generator=g, dtype=torch.float64)
        k2 = r - (r @ u) / (k @ u) * k  # k2ᵀ C⁻¹ k* = 0
        assert abs(float(k2 @ u)) < 1e-10
        assert torch.allclose((W + d) @ k2, W @ k2, atol=1e-10)
    # the minimum-C-norm solution: among updates with (W + Δ) k = v, ROME's has the least tr(Δ C Δᵀ)
    r = torch.randn(8, generator=g, dtype=torch.float64)
    other = d + torch.outer(torch.randn(5, generator=g, dtype=torch.float64), r - (r @ k) / (k @ k) * k)
    assert torch.allclose((W + other) @ k, v, atol=1e-10)
    assert torch.trace(other @ C @ other.T) > torch.trace(d @ C @ d.T)


def test_memit_one_edit_one_layer_is_scaled_rome():
    g = torch.Generator().manual_seed(2)
    W, k, delta = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((5, 8), (8,), (5,)))
    C, lam = spd(8), 3.0
    s = float(k @ torch.linalg.solve(C, k))
    ref = rank_one_update(W, k, W @ k + delta, C) * s / (lam + s)  # Sherman–Morrison
    assert torch.allclose(memit_update(delta[None], k[None], C, lam), ref, atol=1e-10)
    # λ → 0 gives ROME itself
    assert torch.allclose(memit_update(delta[None], k[None], C, 1e-9), rank_one_update(W, k, W @ k + delta, C),
                          atol=1e-6)


def test_memit_update_solves_its_least_squares():
    g = torch.Generator().manual_seed(3)
    R, K = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    C, lam = spd(8, 1), 0.7
    D = memit_update(R, K, C, lam)
    # gradient of λ tr(Δ C Δᵀ) + ‖K Δᵀ − R‖² vanishes at the solution
    grad = lam * D @ C + (D @ K.T - R.T) @ K
    assert grad.abs().max() < 1e-10


def test_ngram_entropy_reference():
    import math

    text = "a b a b c"
    bi = [("a", "b"), ("b", "a"), ("a", "b"), ("b", "c")]
    h2 = -sum(c / 4 * math.log2(c / 4) for c in (2, 1, 1))
    h3 = math.log2(3)  # three distinct trigrams
    assert len(bi) == 4 and abs(ngram_entropy(text) - (2 / 3 * h2 + 4 / 3 * h3) / 2) < 1e-12


# ---- ROME on a tiny model ----------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])  # nn.Linear, Conv1D ([in, out]), post-norms
def test_rome_tiny_writes_value_and_reverts(tmp_path, threads, family):
    from uncover.editing.stats import model_key

    m = word_model(family)
    snap = snapshot(m)
    req = Request("{} is in the city of", "big ben", " rome")
    with torch.no_grad():
        before = object_logprobs(m, [req.text], [" rome"])[0, 0]
        k = subject_keys(m, 1, req, [""])[0]
        W0 = down_proj(m, 1).detach().double().clone()  # [d_model, d_mlp] whatever the storage
    e = rome(m, req.prompt, req.subject, req.target, layer=1, mom2_samples=256, cache=tmp_path, config=CFG,
             progress=False)
    assert e.is_applied and e.layers == [1] and list(e.deltas) == [down_proj_path(m, 1)]
    assert (tmp_path / model_key(m) / "mom2-layer1-256.safetensors").is_file()
    d = e.deltas[down_proj_path(m, 1)].double()
    assert torch.linalg.matrix_rank(d, rtol=1e-5) == 1
    with torch.no_grad():
        after = object_logprobs(m, [req.text], [" rome"])[0, 0]
        W1 = down_proj(m, 1).double()
        k_star = subject_keys(m, 1, req, e.options["prefixes"]).mean(0)  # keys sit before the edited weight
    # W' k* = W k* + δ: the optimised value is stored exactly at the averaged key (float32 rounding only)
    delta = torch.tensor(e.options["delta"], dtype=torch.float64)
    assert delta.norm() > 0
    assert torch.allclose(W1 @ k_star - W0 @ k_star, delta, atol=1e-4 * float(delta.norm()) + 1e-5)
    assert torch.allclose(k_star, (k + subject_keys(m, 1, req, e.options["prefixes"][1:])[0]) / 2)
    assert after != before
    e.revert()
    assert same(m, snap) and not e.is_applied
    e.revert()  # idempotent
    assert same(m, snap)
    with e.applied():
        assert torch.equal(down_proj(m, 1), W1.float())
    assert same(m, snap)


def test_edit_save_load_reapplies_identically(tmp_path, threads):
    m = word_model()
    e = rome(m, "{} is in the city of", "the tower", " london", layer=2, mom2_samples=256, cache=tmp_path,
             config=CFG, progress=False)
    edited = snapshot(m)
    e.save(tmp_path / "edit")
    fresh = word_model()
    clean = snapshot(fresh)
    loaded = Edit.load(tmp_path / "edit", fresh)
    assert loaded.method == "rome" and loaded.requests == e.requests and loaded.layers == [2]
    assert same(fresh, edited)
    loaded.revert()
    assert same(fresh, clean)
    with pytest.raises(EditError, match="not a saved edit"):
        Edit.load(tmp_path, fresh)
    other = tiny("gpt2")
    other.tokenizer = word_tokenizer()
    with pytest.raises(EditError, match="another model"):
        Edit.load(tmp_path / "edit", other)
    assert e.to_frame()["rank"].tolist() == [1] and "rome" in e.summary()


def test_validation_errors_leave_model_untouched(tmp_path, threads):
    m = word_model()
    snap = snapshot(m)
    with pytest.raises(EditError, match="not in the prompt"):
        rome(m, "the tower is in the city of", "big ben", " rome", layer=1, cache=tmp_path)
    with pytest.raises(EditError, match="no tokens"):
        rome(m, "{} is in the city of", "big ben", "  ", layer=1, cache=tmp_path)
    with pytest.raises(EditError, match="valid: 0 to 2"):
        rome(m, "{} is in the city of", "big ben", " rome", layer=3, cache=tmp_path)
    with pytest.raises(EditError, match="exactly one"):
        rome(m, "{} is in {}", "big ben", " rome", layer=1, cache=tmp_path)
    with pytest.raises(EditError, match="valid: update, suppress"):
        kn_edit(m, "{} is in the city of", "big ben", " rome", mode="swap")
    assert same(m, snap)


class _Boom:
    shape = (32, 48)

    def to(self, *a, **k):
        raise RuntimeError("boom")


def test_apply_deltas_is_atomic():
    m = word_model()
    snap = snapshot(m)
    good = torch.ones(32, 48)
    with pytest.raises(RuntimeError, match="boom"):
        apply_deltas(m, {down_proj_path(m, 0): good, down_proj_path(m, 1): _Boom()})
    assert same(m, snap)
    with pytest.raises(EditError, match="another model"):
        apply_deltas(m, {down_proj_path(m, 0): torch.ones(3, 3)})
    assert same(m, snap)


def test_memit_tiny_and_atomic_failure(tmp_path, threads, monkeypatch):
    m = word_model()
    snap = snapshot(m)
    reqs = [("{} is in the city of", "big ben", " rome"), ("{} is in the city of", "the colosseum", " london")]
    e = memit(m, reqs, layers=[0, 1], mom2_weight=1.0, mom2_samples=256, cache=tmp_path, config=CFG, progress=False)
    assert e.layers == [0, 1] and len(e.deltas) == 2 and len(e.requests) == 2
    assert all(torch.linalg.matrix_rank(d.double(), rtol=1e-5) <= 2 for d in e.deltas.values())
    e.revert()
    assert same(m, snap)
    import importlib

    mm = importlib.import_module("uncover.editing.memit")  # the package re-exports the function under this name

    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("solver failed")
        return memit_update(*a, **k)

    monkeypatch.setattr(mm, "memit_update", failing)
    with pytest.raises(RuntimeError, match="solver failed"):
        memit(m, reqs, layers=[0, 1], mom2_samples=256, cache=tmp_path, config=CFG, progress=False)
    assert same(m, snap)


# ---- knowledge neurons -------------------------------------------------------------------------
def test_kn_suppress_equals_zeroing_neurons(threads):
    m = word_model()
    snap = snapshot(m)
    e = kn_edit(m, "{} is in the city of", "big ben", " rome", mode="suppress", steps=8, threshold=0.1,
                max_neurons=4, layers=[0, 1, 2])
    neurons = [tuple(n) for n in e.options["neurons"]]
    assert neurons and e.method == "kn-suppress"
    with torch.no_grad():
        edited = m("big ben is in the city of")
        e.revert()
        assert same(m, snap)
        hooks = []
        for layer in sorted({x for x, _ in neurons}):
            idx = [i for x, i in neurons if x == layer]

            def fn(v, hp, idx=idx):
                v = v.clone()
                v[..., idx] = 0
                return v

            hooks.append((f"blocks.{layer}.mlp.hook_post", fn))
        ref = m.run_with_hooks("big ben is in the city of", hooks)
    assert torch.allclose(edited, ref, atol=1e-5)


def test_kn_update_reuses_neurons_and_reaches_margin(threads, monkeypatch, tmp_path):
    import uncover.neurons.knowledge as nk
    from uncover.neurons.knowledge import knowledge_neurons

    m = word_model()
    snap = snapshot(m)
    text, new = "big ben is in the city of", m.tokenizer(" rome", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        old = int(m(text)[0, -1].argmax())
    kn = knowledge_neurons(m, [text], old, layers=[0, 1, 2], steps=8, threshold=0.1)
    assert kn.neurons

    def no_search(*a, **k):
        raise AssertionError("given knowledge neurons must be reused, not recomputed")

    monkeypatch.setattr(nk, "knowledge_neurons", no_search)
    e = kn_edit(m, "{} is in the city of", "big ben", " rome", neurons=kn, max_neurons=3, margin=0.5, contrast=None)
    chosen = [tuple(n) for n in e.options["neurons"]]
    assert chosen == kn.neurons[:3] and e.method == "kn-update" and e.options["old"] == m.tokenizer.decode([old])
    # reference: column i of the down projection moved by λ · sign(a_i) · (u_new − u_old) / ‖u_new − u_old‖
    _, cache = m.run_with_cache(text, [f"blocks.{x}.mlp.hook_post" for x in range(3)])
    d = (m.W_U[:, new] - m.W_U[:, old]).detach().double()
    d = d / d.norm()
    lam = e.options["lam"]
    for layer in range(3):
        W = down_proj(m, layer).detach().double() - snap[down_proj_path(m, layer)].double()  # llama: [d_model, d_mlp]
        for i in range(W.shape[1]):
            if (layer, i) in chosen:
                a = float(cache[f"blocks.{layer}.mlp.hook_post"][0, -1, i])
                assert torch.allclose(W[:, i], lam * (1 if a >= 0 else -1) * d, atol=1e-5)
            else:
                assert W[:, i].abs().max() < 1e-7
    # efficacy: the searched λ reaches the margin (the tiny model saturates near 0.8 nats); 0.9 λ does not
    lp = m(text)[0, -1].detach().log_softmax(-1)
    assert float(lp[new] - lp[old]) >= 0.5
    e.revert()
    assert same(m, snap)
    short = kn_edit(m, "{} is in the city of", "big ben", " rome", neurons=kn, max_neurons=3, lam=0.9 * lam,
                    contrast=None)
    lp = m(text)[0, -1].detach().log_softmax(-1)
    assert float(lp[new] - lp[old]) < 0.5
    short.save(tmp_path / "kn")
    short.revert()
    assert same(m, snap)
    again = Edit.load(tmp_path / "kn", m)
    assert again.method == "kn-update" and again.options["lam"] == pytest.approx(0.9 * lam)
    again.revert()
    assert same(m, snap)
    # inconsistent inputs are refused before any weight changes
    wrong = next(w for w in (" paris", " london") if m.tokenizer(w, add_special_tokens=False)["input_ids"][0] != old)
    for kw, msg in [(dict(neurons=kn, old=wrong, max_neurons=3), "neurons given"),
                    (dict(neurons=kn, layers=[1]), "not both"), (dict(old=" rome"), "already"),
                    (dict(neurons=kn, lam=-1.0), "> 0"), (dict(neurons=kn, specificity=1.0), "specificity")]:
        with pytest.raises(EditError, match=msg):
            kn_edit(m, "{} is in the city of", "big ben", " rome", **kw)
    assert same(m, snap)


def test_kn_contrast_keeps_subject_specific_neurons(threads):
    from uncover.neurons.knowledge import knowledge_neurons

    m = word_model()
    text, other = "big ben is in the city of", "the tower is in the city of"
    with torch.no_grad():
        old = int(m(text)[0, -1].argmax())
        kn = knowledge_neurons(m, [text], old, layers=[0, 1, 2], steps=4, threshold=0.05)
        _, ca = m.run_with_cache(text, [f"blocks.{x}.mlp.hook_post" for x in range(3)])
        _, cb = m.run_with_cache(other, [f"blocks.{x}.mlp.hook_post" for x in range(3)])
    # reference: |a| at the edit prompt minus |a| with the contrast subject, above half of |a|
    ref = [(x, i) for x, i in kn.neurons
           if float(ca[f"blocks.{x}.mlp.hook_post"][0, -1, i].abs() - cb[f"blocks.{x}.mlp.hook_post"][0, -1, i].abs())
           > 0.5 * float(ca[f"blocks.{x}.mlp.hook_post"][0, -1, i].abs())]
    assert 0 < len(ref) < len(kn.neurons)  # the filter does something here
    e = kn_edit(m, "{} is in the city of", "big ben", " rome", neurons=kn, contrast="the tower", max_neurons=50,
                lam=1.0)
    assert [tuple(n) for n in e.options["neurons"]] == ref and e.options["contrast"] == "the tower"
    e.revert()


def test_cli_usage_errors_exit_2_before_loading(capsys):
    from uncover.cli.main import main

    for argv, msg in [(["edit", "-p", "{} is in", "-s", "Big Ben", "-t", " Rome", "--method", "rank"], "valid: rome"),
                      (["edit", "-p", "The tower is in", "-s", "Big Ben", "-t", " Rome"], "not in the prompt"),
                      (["edit", "-p", "{} is in", "-s", "Big Ben", "-t", " Rome", "--layer", "-1"], "--layer"),
                      (["edit", "-p", "{} is in", "-s", "Big Ben", "-t", " ", "--method", "kn"], "no tokens"),
                      (["edit", "-p", "{} is in", "-s", "Big Ben", "-t", " Rome", "--margin", "2"], "--method kn"),
                      (["edit", "-p", "{} is in", "-s", "Big Ben", "-t", " Rome", "--method", "kn", "--margin", "0"],
                       "must be > 0")]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and msg in capsys.readouterr().err


def test_statistics_of_models_with_the_same_name_and_shape_are_kept_apart():
    """Two random tiny models share a name and shape but not their statistics; an edit keeps its model's key."""
    from uncover.editing.stats import model_key

    a, b = tiny("llama"), tiny("llama")
    with torch.no_grad():
        b.model.get_input_embeddings().weight.mul_(1.5)
    assert a.name == b.name and model_key(a) != model_key(b)
    key = model_key(a)
    with torch.no_grad():
        down_proj(a, 1).add_(0.1)  # what an edit changes
    assert model_key(a) == key
