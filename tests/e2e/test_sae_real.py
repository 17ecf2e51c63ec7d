"""SAEs on the embedded SmolLM2: a small TopK SAE on an early residual stream trains, splices and steers."""

from __future__ import annotations

import pytest
import torch

from uncover.data.corpus import token_blocks
from uncover.sae import SAE, SAEConfig, TensorSource, TopKSAE, TrainConfig, attach_sae, evaluate_sae, harvest, train_sae

pytestmark = pytest.mark.e2e
HOOK = "blocks.3.hook_resid_post"


@pytest.fixture(scope="module")
def trained(real):
    blocks = token_blocks(real, block_len=64)[:24]
    acts = harvest(real, HOOK, blocks)
    sae = TopKSAE(SAEConfig(d_in=real.cfg.d_model, d_sae=1152, architecture="topk", k=16, hook_name=HOOK))
    with torch.enable_grad():
        return train_sae(sae, TensorSource(acts, 256), TrainConfig(steps=150, lr=3e-3, log_every=25),
                         progress=False).sae


def test_sae_reconstructs_and_recovers_loss(real, trained, tmp_path):
    held = token_blocks(real, block_len=64, split="heldout")[:4]
    ev = evaluate_sae(real, trained, held)
    assert ev.l0 <= 16 + 1e-6
    assert ev.fve > 0.6, ev.summary()
    assert ev.ce_recovered > 0.6, ev.summary()
    assert ev.ce_clean < ev.ce_sae < ev.ce_zero
    back = SAE.load(trained.save(tmp_path / "sae"))
    assert torch.allclose(back.encode(torch.ones(2, real.cfg.d_model)), trained.encode(torch.ones(2, real.cfg.d_model)))


def test_attach_reads_and_steers(real, trained):
    prompt = "The function returns a list of"
    clean = real(prompt)
    with attach_sae(real, trained) as att:
        same = real(prompt)
    assert torch.equal(same, clean)
    f = att["hook_sae_acts_post"][0, -1]
    top = int(f.argmax())
    with attach_sae(real, trained, ablate=[top]):
        ablated = real(prompt)
    with attach_sae(real, trained, steer={top: 10.0}):
        steered = real(prompt)
    assert not torch.allclose(ablated, clean) and not torch.allclose(steered, clean)


def test_cli_train_writes_tensorboard(tmp_path):
    pytest.importorskip("tensorboardX")
    import json
    import subprocess
    import sys

    from tests.unit.test_sae import _tb_scalars

    out, tb = tmp_path / "run", tmp_path / "tb"
    p = subprocess.run([sys.executable, "-m", "uncover.cli.main", "sae", "train", "--out", str(out), "--hook",
                        "blocks.2.hook_resid_post", "--tokens", "500", "--steps", "6", "--batch-size", "128",
                        "--expansion", "1", "--k", "8", "--tensorboard", str(tb), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    loss = _tb_scalars(tb)["train/loss"]
    assert sorted(loss) == [r["step"] for r in rows] and loss[5] == pytest.approx(rows[-1]["loss"], rel=1e-6)
    assert (out / "sae" / "cfg.json").is_file()
