"""SAEs: encode/decode identities, TopK sparsity, JumpReLU straight-through gradients, SAELens
round trips, stores vs direct computation, training on synthetic sparse data, exact resume
(also after killing a training process), attachment and evaluation vs explicit references."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny, tokens
from uncover.sae import (
    SAE,
    JumpReLUSAE,
    ReLUSAE,
    SAEConfig,
    ShardSource,
    TensorSource,
    TopKSAE,
    TrainConfig,
    attach_sae,
    evaluate_sae,
    feature_dashboard,
    harvest,
    train_sae,
)
from uncover.sae.base import SAEError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


def make(arch: str, d_in: int = 8, d_sae: int = 32, hook: str = "", k: int = 4) -> SAE:
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, hook_name=hook, k=k if arch == "topk" else None)
    sae = {"standard": ReLUSAE, "topk": TopKSAE, "jumprelu": JumpReLUSAE}[arch](cfg, seed=1)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def sparse_data(n: int = 4096, d: int = 16, n_feat: int = 48, p: float = 0.05, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feat, d, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    mags = torch.rand(n, n_feat, generator=g) * (torch.rand(n, n_feat, generator=g) < p)
    return mags @ dirs + 0.5


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_identities(arch):
    sae = make(arch)
    x = torch.randn(10, 8)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert torch.allclose(sae.encode_pre(x), pre)
    f = sae.encode(x)
    assert torch.allclose(sae(x), f @ sae.W_dec + sae.b_dec)
    if arch == "standard":
        assert torch.equal(f, torch.relu(pre))
    if arch == "jumprelu":
        assert torch.equal(f, pre * (pre > sae.threshold))
    if arch == "topk":
        with torch.no_grad():
            sae.b_enc.fill_(100.0)  # every pre-activation positive: exactly k survive
        f = sae.encode(x)
        assert ((f > 0).sum(-1) == 4).all()
        top = sae.encode_pre(x).topk(4, dim=-1)
        assert torch.equal(f.gather(-1, top.indices), top.values)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_fold_scale_and_decoder_norm(arch):
    sae = make(arch)
    x = torch.randn(6, 8)
    s = 3.7
    want = sae(x * s) / s
    sae.fold_scale(s)
    assert torch.allclose(sae(x), want, atol=1e-5)
    if arch != "jumprelu":
        before = sae(x)
        sae.normalize_decoder()
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(32), atol=1e-5)
        assert torch.allclose(sae(x), before, atol=1e-5)
        sae.W_dec.grad = torch.randn_like(sae.W_dec)
        sae.remove_parallel_grad()
        assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(-1), torch.zeros(32), atol=1e-5)


def test_jumprelu_straight_through_gradients():
    sae = make("jumprelu", d_in=4, d_sae=6)
    sae.bandwidth = 0.001
    eps = sae.bandwidth
    with torch.no_grad():
        sae.log_threshold.copy_(torch.full((6,), 0.05).log())
    x = torch.randn(20, 4) * 0.1
    pre = sae.encode_pre(x).detach()
    theta = sae.threshold.detach()
    f = sae.activation(sae.encode_pre(x))
    f.sum().backward()
    rect = ((pre - theta).abs() / eps < 0.5).float()
    want = (-(theta / eps) * rect).sum(0) * theta  # chain rule through theta = exp(log_theta)
    assert torch.allclose(sae.log_threshold.grad, want, atol=1e-4)
    # the L0 term: d/dtheta H(pre - theta) = -(1/eps) K(...)
    sae.zero_grad()
    _, parts, _ = sae.training_loss(x, 1.0, None, 0.0)
    loss, _, _ = sae.training_loss(x, 1.0, None, 0.0)
    sae.zero_grad()
    loss.backward()
    f = pre * (pre > theta)
    x_hat = f @ sae.W_dec.detach() + sae.b_dec.detach()
    d_f = 2 * (x_hat - x) @ sae.W_dec.detach().T / len(x)  # d mse / d f
    want = ((d_f * -(theta / eps) * rect).sum(0) + (-(1 / eps) * rect).sum(0) / len(x)) * theta
    assert torch.allclose(sae.log_threshold.grad, want, rtol=1e-3, atol=1e-3)
    assert parts["sparsity"] == pytest.approx(float((pre > theta).float().sum(-1).mean()))


def test_topk_aux_loss():
    sae = make("topk", k=2)
    x = torch.randn(16, 8)
    loss, parts, f = sae.training_loss(x, 0.0, torch.zeros(32, dtype=torch.bool), 1 / 32)
    assert float(loss.detach()) == pytest.approx(parts["mse"]) and "aux" not in parts
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:5] = True
    loss, parts, _ = sae.training_loss(x, 0.0, dead, 1 / 32)
    pre = sae.encode_pre(x)
    e = (x - sae.decode(f)).detach()
    top = pre[:, :5].topk(4, dim=-1)  # k_aux = min(5 dead, d_in // 2 = 4)
    e_hat = torch.zeros(16, 32).scatter(-1, top.indices, torch.relu(top.values)) @ sae.W_dec
    want = (e_hat - e).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean()
    assert parts["aux"] == pytest.approx(float(want.detach()), rel=1e-5)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_round_trip(arch, tmp_path):
    sae = make(arch, hook="blocks.3.hook_resid_post")
    sae.save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    for key in ("d_in", "d_sae", "hook_name", "hook_layer", "architecture", "activation_fn_str", "dtype", "device",
                "apply_b_dec_to_input", "normalize_activations"):
        assert key in cfg
    assert cfg["hook_layer"] == 3 and cfg["architecture"] == arch
    from safetensors.torch import load_file

    w = load_file(tmp_path / "s" / "sae_weights.safetensors")
    assert w["W_enc"].shape == (8, 32) and w["W_dec"].shape == (32, 8)
    assert ("threshold" in w) == (arch == "jumprelu")
    back = SAE.load(tmp_path / "s")
    x = torch.randn(5, 8)
    assert type(back) is type(sae) and torch.allclose(back(x), sae(x), atol=1e-6)


def test_load_saelens_v6_cfg(tmp_path):
    """A cfg.json as SAELens 6 writes it: hook name only under metadata, k at top level."""
    from safetensors.torch import save_file

    sae = make("topk")
    d = tmp_path / "v6"
    d.mkdir()
    save_file({k: getattr(sae, k).detach().contiguous() for k in sae.state_keys}, d / "sae_weights.safetensors")
    (d / "cfg.json").write_text(json.dumps({
        "architecture": "topk", "d_in": 8, "d_sae": 32, "k": 4, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre", "hook_head_index": None}}))
    back = SAE.load(d)
    assert back.cfg.hook_name == "blocks.8.hook_resid_pre" and back.cfg.k == 4
    x = torch.randn(3, 8)
    assert torch.allclose(back(x), sae(x))
    (d / "cfg.json").write_text(json.dumps({"architecture": "gated", "d_in": 8, "d_sae": 32}))
    with pytest.raises(SAEError, match="valid: jumprelu, standard, topk"):
        SAE.load(d)


def test_harvest_and_sources(tmp_path):
    m = tiny("llama")
    toks = tokens(batch=6, pos=7, seed=2)
    acts = harvest(m, "blocks.1.hook_resid_post", toks, batch_size=4, skip_first=1)
    _, cache = m.run_with_cache(toks, ["blocks.1.hook_resid_post"])
    assert torch.allclose(acts, cache["blocks.1.hook_resid_post"][:, 1:].reshape(-1, m.cfg.d_model), atol=1e-6)
    out = harvest(m, "blocks.1.hook_resid_post", toks, batch_size=4, out_dir=tmp_path / "acts", shard_tokens=10)
    shards = sorted(out.glob("shard_*.safetensors"))
    assert len(shards) == 4  # 36 rows in shards of 10
    src = ShardSource(out, batch_size=5, seed=1)
    seen = torch.cat([src.batch(i) for i in range(src.steps_per_epoch)])
    assert len(seen) == 35 and all(any(torch.equal(r, a) for a in acts) for r in seen)
    assert torch.equal(src.batch(3), ShardSource(out, batch_size=5, seed=1).batch(3))  # pure in the step
    ts = TensorSource(acts, batch_size=6, seed=0)
    epoch = torch.cat([ts.batch(i) for i in range(6)])
    assert torch.equal(epoch.sort(0).values, acts.sort(0).values)


def test_training_learns_sparse_dictionary():
    x = sparse_data()
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4))
    r = train_sae(sae, TensorSource(x, 256), TrainConfig(steps=300, lr=3e-3, log_every=50), progress=False)
    with torch.no_grad():
        err = (r.sae(x) - x).pow(2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean()
    assert float(err) < 0.15  # > 85% of the variance explained on raw (unscaled) inputs
    assert r.metrics[-1]["fve"] > r.metrics[0]["fve"]
    relu = ReLUSAE(SAEConfig(d_in=16, d_sae=64))
    r2 = train_sae(relu, TensorSource(x, 256), TrainConfig(steps=200, lr=3e-3, sparsity_coeff=0.05,
                                                            resample_every=50, dead_steps=20), progress=False)
    assert r2.metrics[-1]["fve"] > 0.5 and r2.metrics[-1]["l0"] < 64


def test_jumprelu_sparsity_coefficient_lowers_l0():
    x = sparse_data()
    l0 = []
    for coeff in (0.001, 0.05):
        sae = JumpReLUSAE(SAEConfig(d_in=16, d_sae=64, architecture="jumprelu"))
        r = train_sae(sae, TensorSource(x, 256), TrainConfig(steps=300, lr=3e-3, sparsity_coeff=coeff),
                      progress=False)
        l0.append(r.metrics[-1]["l0"])
        assert r.metrics[-1]["fve"] > 0.9
    assert l0[1] < 0.75 * l0[0]


def _run(out: Path, resume: bool, steps: int = 60) -> SAE:
    x = sparse_data(n=1024, seed=1)
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=48, architecture="topk", k=3), seed=2)
    cfg = TrainConfig(steps=steps, lr=3e-3, checkpoint_every=10, dead_steps=5, log_every=5)
    return train_sae(sae, TensorSource(x, 128, seed=3), cfg, out_dir=out, resume=resume, progress=False).sae


def test_resume_equals_uninterrupted(tmp_path):
    full = _run(tmp_path / "a", resume=False)
    _run(tmp_path / "b", resume=False, steps=60)
    # simulate a crash after step 30: restore that checkpoint from a 30-step run of the same config
    part = tmp_path / "c"
    x = sparse_data(n=1024, seed=1)
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=48, architecture="topk", k=3), seed=2)
    cfg = TrainConfig(steps=60, lr=3e-3, checkpoint_every=10, dead_steps=5, log_every=5)

    class Crash(Exception):
        pass

    class Crashing(TensorSource):
        def batch(self, step):
            if step == 35:
                raise Crash
            return super().batch(step)

    with pytest.raises(Crash):
        train_sae(sae, Crashing(x, 128, seed=3), cfg, out_dir=part, progress=False)
    resumed = _run(part, resume=True)
    for k in full.state_keys:
        assert torch.equal(getattr(full, k), getattr(resumed, k)), k
    rows = [json.loads(r) for r in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(0, 60, 5)) + [59]


WORKER = r"""
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from tests.unit.test_sae import sparse_data
from uncover.sae import TopKSAE, SAEConfig, TensorSource, TrainConfig, train_sae

class Slow(TensorSource):
    def batch(self, step):
        time.sleep(0.05)
        return super().batch(step)

x = sparse_data(n=1024, seed=1)
sae = TopKSAE(SAEConfig(d_in=16, d_sae=48, architecture="topk", k=3), seed=2)
cfg = TrainConfig(steps=60, lr=3e-3, checkpoint_every=10, dead_steps=5, log_every=5)
train_sae(sae, Slow(x, 128, seed=3), cfg, out_dir={out!r}, progress=False)
"""


def test_resume_after_kill(tmp_path):
    root = str(Path(__file__).resolve().parents[2])
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, str(Path(root) / "src")]))
    proc = subprocess.Popen([sys.executable, "-c", WORKER.format(root=root, out=str(out))], env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            f = out / "checkpoint" / "trainer_state.json"
            if f.is_file() and json.loads(f.read_text())["state"]["step"] >= 20:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the worker finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    step = json.loads((out / "checkpoint" / "trainer_state.json").read_text())["state"]["step"]
    assert 20 <= step < 60
    resumed = _run(out, resume=True)
    full = _run(tmp_path / "full", resume=False)
    for k in full.state_keys:
        assert torch.equal(getattr(full, k), getattr(resumed, k)), k


def _perfect(d: int, hook: str) -> ReLUSAE:
    """An SAE that reconstructs exactly: f = [relu(x), relu(-x)], x_hat = f @ [I; -I]."""
    sae = ReLUSAE(SAEConfig(d_in=d, d_sae=2 * d, hook_name=hook, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_attach_read_ablate_steer():
    m = tiny("llama")
    hook = "blocks.1.hook_resid_post"
    toks = tokens(batch=2, pos=6, seed=8)
    sae = make("standard", d_in=m.cfg.d_model, d_sae=64, hook=hook)
    with torch.no_grad():
        clean, cache = m.run_with_cache(toks, [hook])
        with attach_sae(m, sae) as att:
            same = m(toks)
        assert torch.allclose(same, clean)
        x = cache[hook]
        assert torch.allclose(att["hook_sae_acts_post"], sae.encode(x), atol=1e-6)
        f = sae.encode(x)
        feat = int(f.sum((0, 1)).argmax())
        seen = {}
        with m.hooks([("blocks.2.hook_resid_pre", lambda v, hp: seen.__setitem__("v", v.clone()))]):
            with attach_sae(m, sae, ablate=[feat]):
                m(toks)
            ablated = seen["v"]
            with attach_sae(m, sae, steer={feat: 2.5}):
                m(toks)
            steered = seen["v"]
            with attach_sae(m, sae, use_error_term=False, skip_first=1):
                m(toks)
            spliced = seen["v"]
        assert torch.allclose(ablated, x - f[..., feat : feat + 1] * sae.W_dec[feat], atol=1e-5)
        assert torch.allclose(steered, x + 2.5 * sae.W_dec[feat], atol=1e-5)
        assert torch.allclose(spliced[:, 1:], sae(x[:, 1:]), atol=1e-5) and torch.equal(spliced[:, 0], x[:, 0])


def test_evaluate_perfect_and_zero():
    m = tiny("gpt2")
    hook = "blocks.1.hook_resid_post"
    toks = tokens(batch=4, pos=8, seed=9)
    ev = evaluate_sae(m, _perfect(m.cfg.d_model, hook), toks, batch_size=3)
    with torch.no_grad():
        logits = m(toks)
    ce = torch.nn.functional.cross_entropy(logits[:, 1:-1].reshape(-1, logits.shape[-1]), toks[:, 2:].reshape(-1))
    assert ev.ce_clean == pytest.approx(float(ce), rel=1e-5)
    assert ev.fve == pytest.approx(1.0, abs=1e-6) and ev.ce_recovered == pytest.approx(1.0, abs=1e-4)
    assert ev.l0 == pytest.approx(m.cfg.d_model, abs=1)  # one of relu(x), relu(-x) per dim
    dead_sae = _perfect(m.cfg.d_model, hook)
    with torch.no_grad():
        dead_sae.b_enc.fill_(-1e4)  # nothing fires: reconstruction = 0 = zero ablation
    ev0 = evaluate_sae(m, dead_sae, toks)
    assert ev0.ce_recovered == pytest.approx(0.0, abs=1e-4) and ev0.dead == 1.0 and ev0.l0 == 0


def test_dashboard_top_values():
    m = tiny("llama")
    hook = "blocks.2.hook_resid_post"
    toks = tokens(batch=5, pos=9, seed=10)
    sae = make("standard", d_in=m.cfg.d_model, d_sae=40, hook=hook)
    dash = feature_dashboard(m, sae, [0, 3], tokens=toks, k=3)
    _, cache = m.run_with_cache(toks, [hook])
    f = sae.encode(cache[hook][:, 1:])[..., [0, 3]].reshape(-1, 2)
    assert torch.allclose(dash.contexts.values, f.sort(0, descending=True).values[:3].T, atol=1e-5)
    html = dash.to_html()
    assert "Feature 3" in html and "promotes" in html
    auto = feature_dashboard(m, sae, tokens=toks, n_random=4)
    assert len(auto.features) == 4 and all(auto.density[f] > 0 for f in auto.features)


def test_activation_store_stream_and_replay():
    from uncover.sae import ActivationStore

    m = tiny("llama")
    toks = tokens(batch=8, pos=6, seed=11)
    store = ActivationStore(m, "blocks.0.hook_resid_post", toks, batch_size=5, buffer_tokens=20, model_batch=3)
    first = [store.batch(i) for i in range(6)]
    acts = harvest(m, "blocks.0.hook_resid_post", toks)
    for b in first:  # every streamed row is a real activation
        assert all(any(torch.allclose(r, a, atol=1e-6) for a in acts) for r in b)
    again = ActivationStore(m, "blocks.0.hook_resid_post", toks, batch_size=5, buffer_tokens=20, model_batch=3)
    assert torch.equal(again.batch(4), first[4])  # asking for a later step replays the stream
    assert torch.equal(store.batch(2), first[2])  # and an earlier one restarts it


def _masked_crc(data: bytes) -> int:
    from tensorboardX.crc32c import crc32c

    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _tb_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """Scalars in TensorBoard event files, read by hand: TFRecord framing (u64 length, masked
    CRC32C of it, payload, masked CRC32C of it) around ``Event`` protos; files in time order,
    a ``SessionLog.START`` event at step s drops earlier-written scalars at steps >= s."""
    import struct

    from tensorboardX.proto.event_pb2 import Event, SessionLog

    files = []
    for f in logdir.glob("events.out.tfevents.*"):
        data, off, events = f.read_bytes(), 0, []
        while off < len(data):
            head = data[off : off + 8]
            (n,) = struct.unpack("<Q", head)
            assert struct.unpack("<I", data[off + 8 : off + 12])[0] == _masked_crc(head)
            payload = data[off + 12 : off + 12 + n]
            assert struct.unpack("<I", data[off + 12 + n : off + 16 + n])[0] == _masked_crc(payload)
            ev = Event()
            ev.ParseFromString(payload)
            events.append(ev)
            off += 16 + n
        files.append(events)
    out: dict[str, dict[int, float]] = {}
    for events in sorted(files, key=lambda evs: evs[0].wall_time):
        for ev in events:
            if ev.HasField("session_log") and ev.session_log.status == SessionLog.START:
                out = {t: {s: v for s, v in d.items() if s < ev.step} for t, d in out.items()}
            for v in ev.summary.value:
                out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


def _assert_tb_matches_jsonl(tb: Path, jsonl: Path) -> None:
    rows = [json.loads(r) for r in jsonl.read_text().splitlines()]
    scalars = _tb_scalars(tb)
    keys = {k for r in rows for k in r if k != "step"}
    assert set(scalars) == {f"train/{k}" for k in keys}
    for k in keys:
        want = {r["step"]: r[k] for r in rows if k in r}
        got = scalars[f"train/{k}"]
        assert sorted(got) == sorted(want), k
        for s, v in want.items():  # simple_value is float32
            assert got[s] == pytest.approx(v, rel=1e-6, abs=1e-30), (k, s)


def test_tensorboard_scalars_equal_jsonl(tmp_path):
    pytest.importorskip("tensorboardX")
    x = sparse_data(n=512, seed=1)
    cfg = TrainConfig(steps=23, lr=3e-3, checkpoint_every=10, dead_steps=3, log_every=4)
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=48, architecture="topk", k=3), seed=2)
    train_sae(sae, TensorSource(x, 64), cfg, out_dir=tmp_path / "a", tensorboard=True, progress=False)
    _assert_tb_matches_jsonl(tmp_path / "a" / "tensorboard", tmp_path / "a" / "metrics.jsonl")
    assert "train/aux" in _tb_scalars(tmp_path / "a" / "tensorboard")  # dead latents after 3 steps
    # a crash after the step-10 checkpoint, then resume: the crashed run's later scalars are purged
    tb = tmp_path / "tb"

    class Crashing(TensorSource):
        def batch(self, step):
            if step == 17:
                raise RuntimeError("crash")
            return super().batch(step)

    sae = TopKSAE(SAEConfig(d_in=16, d_sae=48, architecture="topk", k=3), seed=2)
    with pytest.raises(RuntimeError):
        train_sae(sae, Crashing(x, 64), cfg, out_dir=tmp_path / "b", tensorboard=tb, progress=False)
    assert max(_tb_scalars(tb)["train/loss"]) == 16  # flushed on the way out
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=48, architecture="topk", k=3), seed=2)
    train_sae(sae, TensorSource(x, 64), cfg, out_dir=tmp_path / "b", resume=True, tensorboard=tb, progress=False)
    _assert_tb_matches_jsonl(tb, tmp_path / "b" / "metrics.jsonl")
    assert (tmp_path / "b" / "metrics.jsonl").read_text() == (tmp_path / "a" / "metrics.jsonl").read_text()


def test_tensorboard_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    from uncover.core.errors import UncoverError

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import now raises ImportError
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=48, architecture="topk", k=3))
    with pytest.raises(UncoverError, match=r"pip install uncover\[tensorboard\]"):
        train_sae(sae, TensorSource(sparse_data(n=256), 64), TrainConfig(steps=2), out_dir=tmp_path,
                  tensorboard=True, progress=False)
    with pytest.raises(UncoverError, match="needs out_dir"):
        train_sae(sae, TensorSource(sparse_data(n=256), 64), TrainConfig(steps=2), tensorboard=True, progress=False)


def _dense_topk_loss(sae: TopKSAE, x: torch.Tensor, dead: torch.Tensor, aux_coeff: float) -> torch.Tensor:
    """TopK training loss the plain dense way: decode(activation(encode_pre(x))) and AuxK on masked pre."""
    pre = sae.encode_pre(x)
    f = sae.activation(pre)
    err = x - sae.decode(f)
    loss = err.pow(2).sum(-1).mean()
    if dead.any():
        top = pre.masked_fill(~dead, float("-inf")).topk(min(int(dead.sum()), x.shape[-1] // 2), dim=-1)
        e_hat = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values)) @ sae.W_dec
        e = err.detach()
        loss = loss + aux_coeff * (e_hat - e).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean()
    return loss


@pytest.mark.parametrize("n_dead", [0, 3, 20])
def test_topk_sparse_training_step_equals_dense(n_dead):
    torch.manual_seed(0)
    sae = make("topk", d_in=12, d_sae=40, k=5).double()
    x = torch.randn(33, 12, dtype=torch.float64) * 2 + 0.3
    dead = torch.zeros(40, dtype=torch.bool)
    dead[torch.randperm(40)[:n_dead]] = True
    loss, parts, f = sae.training_loss(x, 0.0, dead, 0.5)
    grads = torch.autograd.grad(loss, list(sae.parameters()))
    want = _dense_topk_loss(sae, x, dead, 0.5)
    want_grads = torch.autograd.grad(want, list(sae.parameters()))
    assert float(loss) == pytest.approx(float(want), rel=1e-10)
    for (name, _), g, w in zip(sae.named_parameters(), grads, want_grads):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-12), name
    ref = sae.encode(x).detach()
    assert torch.equal(f > 0, ref > 0) and torch.allclose(f, ref, rtol=1e-12, atol=1e-12)
    assert ("aux" in parts) == (n_dead > 0)


def test_jumprelu_pre_activation_loss_lifts_dead_latents():
    sae = make("jumprelu", d_in=8, d_sae=32)
    x = torch.randn(40, 8)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:6] = True
    base, parts0, _ = sae.training_loss(x, 0.5, None, 0.1)
    loss, parts, _ = sae.training_loss(x, 0.5, dead, 0.1)
    pre = sae.encode_pre(x).detach()
    theta = sae.threshold.detach()
    want = sum(float(((theta[i] - pre[:, i]).relu() * sae.W_dec[i].norm()).mean()) for i in range(6))
    assert "aux" not in parts0 and parts["aux"] == pytest.approx(want, rel=1e-5)
    assert float(loss - base) == pytest.approx(0.1 * want, rel=1e-4)
    sae.zero_grad()
    (loss - base).backward()
    below = (pre[:, :6] < theta[:6]).any(0)
    assert (sae.b_enc.grad[:6][below] < 0).all() and (sae.b_enc.grad[6:] == 0).all()  # only dead ones pushed up
