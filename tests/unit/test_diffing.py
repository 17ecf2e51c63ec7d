"""Crosscoders and model diffs on tiny models: the loss is Lindsey et al.'s, identical models give shared latents,
a changed MLP row gives changed-only latents that point at it, resume is exact, diffs restore the base."""

from __future__ import annotations

import hashlib

import pytest
import torch

from tests.conftest import V, tiny
from uncover.core.errors import UsageError
from uncover.diffing import Crosscoder, analyse_crosscoder, model_diff, resolve_change, train_crosscoder
from uncover.sae import SAE, SAEError, TrainConfig

HOOK = "blocks.1.hook_mlp_out"
ROW = "model.layers.1.mlp.down_proj.weight"  # [d_model, d_mlp]: column j is neuron j's output row W_out[j]
NEURON = 5


def corpus(n: int = 64, pos: int = 33) -> torch.Tensor:
    return torch.randint(3, V, (n, pos), generator=torch.Generator().manual_seed(0))


def train_cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 300, "lr": 3e-3, "sparsity_coeff": 0.3, "warmup_steps": 20,
                          "sparsity_warmup_steps": 50, "log_every": 50, "checkpoint_every": 0, **kw})


def changed_row(m, scale: float = 8.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A delta that adds ``v`` to neuron ``NEURON``'s output row of layer 1's MLP, and ``v``."""
    w = dict(m.model.named_parameters())[ROW]
    v = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(1))
    v = v / v.norm() * w[:, NEURON].norm() * scale
    delta = torch.zeros_like(w)
    delta[:, NEURON] = v
    return {ROW: delta.detach()}, v


def fingerprint(m) -> str:
    h = hashlib.sha256()
    for _, p in sorted(m.model.named_parameters()):
        h.update(p.detach().numpy().tobytes())
    return h.hexdigest()


def test_loss_is_lindsey_et_al(one_thread):
    cc = Crosscoder.create(d_model=6, d_sae=10, seed=3)
    with torch.no_grad():
        cc.W_dec[:, 6:] = 3.0 * cc.W_dec[:, :6]  # B's decoders are 3x A's
        cc.b_enc.fill_(0.1)
    xa, xb = torch.randn(7, 6), torch.randn(7, 6)
    loss, parts, f = cc.training_loss(torch.cat([xa, xb], -1), 0.5, None, 0.0)
    wa, wb = cc.W_dec[:, :6], cc.W_dec[:, 6:]
    f_ref = torch.relu(xa @ cc.W_enc[:6] + xb @ cc.W_enc[6:] + cc.b_enc)
    mse = ((f_ref @ wa + cc.b_dec[:6] - xa).pow(2).sum(-1) + (f_ref @ wb + cc.b_dec[6:] - xb).pow(2).sum(-1)).mean()
    pen = (f_ref * (wa.norm(dim=-1) + wb.norm(dim=-1))).sum(-1).mean()
    torch.testing.assert_close(f, f_ref)
    torch.testing.assert_close(loss, mse + 0.5 * pen)
    rel = cc.relative_norms()
    torch.testing.assert_close(rel, wb.norm(dim=-1) / (wa.norm(dim=-1) + wb.norm(dim=-1)))
    torch.testing.assert_close(rel, torch.full((10,), 0.75))


def test_identical_models_give_shared_latents(one_thread):
    m = tiny("llama")
    toks = corpus()
    r, xa, xb = train_crosscoder(m, {}, HOOK, toks, 128, train_cfg(), batch_size=256)
    assert torch.equal(xa, xb)
    a = analyse_crosscoder(r.sae, xa, xb)
    live = [c for c in a.classes if c != "dead"]
    assert len(live) > 64 and live.count("shared") >= 0.95 * len(live), a.counts()
    assert a.fve["base"] > 0.8 and abs(a.fve["base"] - a.fve["changed"]) < 1e-3


@pytest.fixture(scope="module")
def changed_cc():
    """A tiny model, a delta changing one MLP row by ``v``, and a crosscoder trained on the pair."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = tiny("llama")
        before = fingerprint(m)
        delta, v = changed_row(m)
        r, xa, xb = train_crosscoder(m, delta, HOOK, corpus(), 128, train_cfg(), batch_size=256)
        assert fingerprint(m) == before  # the base is restored after harvesting the changed model
        return m, delta, v, r, xa, xb
    finally:
        torch.set_num_threads(threads)


def test_changed_mlp_row_gives_changed_only_latents_pointing_at_it(changed_cc, one_thread):
    m, delta, v, r, xa, xb = changed_cc
    toks = corpus()
    assert not torch.equal(xa, xb)
    a = analyse_crosscoder(r.sae, xa, xb, top=128)
    counts = a.counts()
    assert counts["changed-only"] >= 2 and counts["base-only"] <= 2, counts
    da, db = r.sae.decoders()
    cos = [abs(float(torch.nn.functional.cosine_similarity(db[row["latent"]] - da[row["latent"]], v, dim=0)))
           for row in a.latents if row["class"] == "changed-only"]
    assert min(cos) > 0.7 and sum(cos) / len(cos) > 0.85, cos
    # and they fire where the changed neuron fires: their activation tracks |neuron activation|
    post = m.run_with_cache(toks, names=["blocks.1.mlp.hook_post"])[1]["blocks.1.mlp.hook_post"][:, 1:, NEURON]
    f = r.sae.encode_pair(xa, xb).detach()
    exclusive = [row["latent"] for row in a.latents if row["class"] == "changed-only"]
    signal = f[:, exclusive].sum(-1)
    corr = torch.corrcoef(torch.stack([signal, post.reshape(-1).abs()]))[0, 1]
    assert corr > 0.8, float(corr)


def test_resume_after_interruption_equals_uninterrupted(tmp_path, monkeypatch, one_thread):
    from uncover.sae import store

    m = tiny("llama")
    delta, _ = changed_row(m)
    toks = corpus(16)
    cfg = train_cfg(steps=40, checkpoint_every=10, log_every=5)
    full, _, _ = train_crosscoder(m, delta, HOOK, toks, 32, cfg, batch_size=64, out_dir=tmp_path / "a")

    class Crash(Exception):
        pass

    batch = store.TensorSource.batch

    def crashing(self, step):
        if step == 25:
            raise Crash
        return batch(self, step)

    monkeypatch.setattr(store.TensorSource, "batch", crashing)
    with pytest.raises(Crash):
        train_crosscoder(m, delta, HOOK, toks, 32, cfg, batch_size=64, out_dir=tmp_path / "b")
    monkeypatch.setattr(store.TensorSource, "batch", batch)
    resumed, _, _ = train_crosscoder(m, delta, HOOK, toks, 32, cfg, batch_size=64, out_dir=tmp_path / "b",
                                     resume=True)
    for k in full.sae.state_keys:
        assert torch.equal(getattr(full.sae, k), getattr(resumed.sae, k)), k
    back = Crosscoder.load(tmp_path / "b")
    assert torch.equal(back.W_dec, resumed.sae.W_dec) and back.cfg.hook_name == HOOK
    with pytest.raises(SAEError, match="not an SAE directory"):
        SAE.load(tmp_path / "b" / "sae")


def test_model_diff_side_by_side_and_restores_the_base(one_thread):
    m = tiny("llama")
    before = fingerprint(m)
    delta, v = changed_row(m, scale=30.0)
    probes = corpus(4, 9)
    d = model_diff(m, delta, probes)
    assert fingerprint(m) == before
    (row,) = d.weight_delta
    assert row["parameter"] == ROW and row["rank"] == 1 and row["changed_entries"] == v.numel()
    assert row["delta_norm"] == pytest.approx(float(v.norm()), rel=1e-5)
    assert all(r["kl"] > 0 for r in d.predictions) and "parameter(s) changed" in d.summary()
    same = model_diff(m, {}, probes)
    assert same.weight_delta == [] and all(r["kl"] == 0 and not r["top_changed"] for r in same.predictions)
    # the same change as another model: the same weight delta and predictions
    other = tiny("llama")
    with torch.no_grad():
        dict(other.model.named_parameters())[ROW].add_(delta[ROW])
    ids = probes[:1]
    d2 = model_diff(m, other, probes, subject_prompt=ids, subject=[1, 2], trace_kind="mlp", trace_samples=2)
    assert [r["parameter"] for r in d2.weight_delta] == [ROW]
    assert [r["kl"] for r in d2.predictions] == pytest.approx([r["kl"] for r in d.predictions], rel=1e-4)
    # the traces are each model's own causal trace; the in-place delta gives the same changed trace
    from uncover.patching.causal_tracing import causal_trace

    assert torch.equal(d2.trace["grid_base"], causal_trace(m, ids, [1, 2], kind="mlp", samples=2).grids["mlp"])
    assert torch.equal(d2.trace["grid_changed"], causal_trace(other, ids, [1, 2], kind="mlp", samples=2).grids["mlp"])
    d3 = model_diff(m, delta, probes, subject_prompt=ids, subject=[1, 2], trace_kind="mlp", trace_samples=2)
    torch.testing.assert_close(d3.trace["grid_changed"], d2.trace["grid_changed"], rtol=1e-4, atol=1e-5)
    assert fingerprint(m) == before
    assert "Predictions" in d.cli_text() and len(d.to_frame()) == 4


def test_model_diff_with_a_crosscoder_and_a_steering_vector(changed_cc, one_thread, tmp_path):
    from uncover.steering.vectors import SteeringVector

    m, delta, _, r, _, _ = changed_cc
    d = model_diff(m, delta, corpus(4, 17), features=r.sae, top=5)
    assert d.feature_counts["changed-only"] >= 1 and len(d.features) == 5
    assert d.features[0]["class"] == "changed-only" and d.features[0]["contexts"]
    path = SteeringVector({1: torch.ones(m.cfg.d_model)}, model="tiny").save(tmp_path / "v.safetensors")
    before = fingerprint(m)
    ds = model_diff(m, str(path), corpus(4, 9), steer_scale=2.0)
    assert fingerprint(m) == before and all(r["kl"] > 0 for r in ds.predictions)
    (row,) = ds.weight_delta
    assert row["what"] == "activation addition" and row["delta_norm"] == pytest.approx(2 * m.cfg.d_model ** 0.5)


def test_bad_changed_is_a_usage_error(one_thread, tmp_path):
    m = tiny("llama")
    with pytest.raises(UsageError, match="lacks"):
        resolve_change(m, {"model.layers.9.mlp.down_proj.weight": torch.zeros(2)})
    with pytest.raises(UsageError, match="base model itself"):
        resolve_change(m, m)
    other = tiny("gpt2")
    with pytest.raises(UsageError, match="does not have the base's parameters"):
        resolve_change(m, other).weight_delta(m)


def test_crosscoder_and_diff_configs_refuse_bad_input(tmp_path):
    from uncover.diffing.ops import CrosscoderConfig, DiffConfig

    with pytest.raises(UsageError, match="not neither"):
        CrosscoderConfig(out=tmp_path / "cc")
    with pytest.raises(UsageError, match="not both"):
        DiffConfig(models=["b", "x"], edit_subject="The Eiffel Tower", edit_target=" Rome")
    with pytest.raises(UsageError, match="needs both"):
        DiffConfig(edit_subject="The Eiffel Tower")
    with pytest.raises(UsageError, match="holds no checkpoint"):
        CrosscoderConfig(out=tmp_path / "cc", models=["x"], resume=True)
    with pytest.raises(UsageError, match="is not in the subject prompt"):
        DiffConfig(models=["x"], subject="The Louvre")
    with pytest.raises(UsageError, match="no tokenizer"):
        DiffConfig(models=["x"]).check_model(tiny("llama"))


def test_diff_base_changed_on_the_command_line(tmp_path, monkeypatch, capsys):
    """``uncover diff BASE CHANGED`` loads BASE itself; ``--model`` naming another base is refused; the API
    refuses a config whose BASE is not the model given."""
    import json

    from tests.conftest import tiny_hf, word_level_tokenizer
    from uncover.cli.main import main
    from uncover.diffing.ops import DiffConfig
    from uncover.ops.registry import execute

    def cli(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as e:
            main(list(args))
        out, err = capsys.readouterr()
        return int(e.value.code or 0), out, err

    monkeypatch.setenv("UNCOVER_CACHE", str(tmp_path / "cache"))
    words = [f"w{i}" for i in range(40)]
    base, changed = tmp_path / "base", tmp_path / "changed"
    for d, scale in ((base, 0.0), (changed, 30.0)):
        hf = tiny_hf("llama")
        with torch.no_grad():
            dict(hf.named_parameters())[ROW][:, 3] += scale
        hf.save_pretrained(d)
        word_level_tokenizer(words).save_pretrained(d)
    probe = ["--probe", "w1 w2 w3", "--probe", "w4 w5", "--trace", "none", "--json"]
    code, out, err = cli("diff", str(base), str(changed), *probe)
    assert code == 0, err
    result = json.loads(out)
    assert [r["parameter"] for r in result["weight_delta"]] == [ROW]
    assert all(r["kl"] > 0 for r in result["records"])
    assert result["provenance"]["model"]["source"] == str(base)
    code, _, err = cli("diff", str(base), str(changed), "--model", str(changed), *probe)
    assert code == 2 and "given twice" in err
    code, _, err = cli("diff", "a", "b", "c", *probe)
    assert code == 2 and "at most two" in err
    with pytest.raises(UsageError, match="names the base model"):
        execute("diff", DiffConfig(models=[str(base), str(changed)], trace="none"), tiny("llama"))
