"""Training that diverges stops with one clear error (core/diverge.check_finite), in every optimisation loop.

Each loop runs a few steps on a tiny problem with a learning rate far too large (1e30, or infinity
where the loop clamps its step) and must raise :class:`TrainingDiverged` naming the step and the
learning rate, save nothing non-finite and leave no run presented as finished; weight edits leave
the model as it was.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny, tokens
from tests.unit.test_editing import CFG, same, snapshot, word_model
from uncover.core.diverge import TrainingDiverged, check_finite, check_improved
from uncover.core.errors import UncoverError

HUGE = 1e30


def _finite_files(root) -> None:
    """Every safetensors file under ``root`` holds finite floats only (nothing diverged was saved)."""
    for f in root.rglob("*.safetensors"):
        for k, v in load_file(f).items():
            assert not v.is_floating_point() or torch.isfinite(v).all(), f"{f}: {k} is not finite"


def test_check_finite_passes_finite_and_names_step_lr_and_fix():
    check_finite(0, loss=torch.tensor(1.0), params=[torch.zeros(3), torch.arange(3)])  # ints are skipped
    check_finite(1, loss=2.5)
    with pytest.raises(TrainingDiverged) as e:
        check_finite(12, loss=torch.tensor(float("nan")), lr=1e30)
    assert str(e.value) == "training diverged: the loss became NaN at step 12 (lr 1e+30); lower --lr"
    assert isinstance(e.value, UncoverError)  # the CLI prints it as one exit-2 line
    with pytest.raises(TrainingDiverged, match=r"SAE training diverged: the weights became infinite at step 3; x"):
        check_finite(3, params=[torch.ones(2), torch.tensor([1.0, -float("inf")])], what="SAE training", fix="x")
    with pytest.raises(TrainingDiverged, match="loss became infinite"):
        check_finite(0, loss=torch.tensor([1.0, float("inf")]))


def test_check_improved_refuses_a_loss_that_rose():
    check_improved(1.0, 0.2)
    check_improved(1.0, 1.5)  # a little worse is noise, not divergence
    with pytest.raises(TrainingDiverged, match="the loss rose from 1 to 5"):
        check_improved(1.0, 5.0)
    with pytest.raises(TrainingDiverged, match="became NaN"):
        check_improved(1.0, float("nan"))


def test_sae_training_diverges_and_saves_nothing_diverged(tmp_path):
    from uncover.sae import SAEConfig, TensorSource, TopKSAE
    from uncover.sae.train import TrainConfig, train_sae

    sae = TopKSAE(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=4))
    src = TensorSource(torch.randn(256, 8, generator=torch.Generator().manual_seed(0)), 32)
    with pytest.raises(TrainingDiverged, match=r"training diverged: the (loss|weights) became .* \(lr 1e\+30\)"):
        train_sae(sae, src, TrainConfig(steps=20, lr=HUGE, warmup_steps=1, checkpoint_every=1), out_dir=tmp_path,
                  progress=False)
    assert not (tmp_path / "sae").exists()  # never presented as a finished run
    _finite_files(tmp_path)


def test_transcoder_training_diverges(one_thread):
    from uncover.sae.train import TrainConfig
    from uncover.transcoders.train import train_transcoders

    with pytest.raises(TrainingDiverged, match="lr 1e\\+30"):
        train_transcoders(tiny("llama"), [1], tokens(4, 8), TrainConfig(steps=20, lr=HUGE, warmup_steps=1),
                          expansion=1, k=4, batch_size=16, skip=True)


def test_grok_training_diverges_and_leaves_no_final_model(tmp_path):
    from uncover.dynamics.grokking.config import GrokConfig
    from uncover.dynamics.grokking.train import train

    cfg = GrokConfig(p=7, d_model=8, n_heads=2, d_mlp=16, steps=10, eval_every=5, lr=HUGE)
    with pytest.raises(TrainingDiverged, match=r"grok training diverged: .* at step \d+ \(lr 1e\+30\); lower --lr"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    _finite_files(tmp_path)


def test_memorization_training_diverges():
    from uncover.dynamics.memorization.config import MemConfig
    from uncover.dynamics.memorization.train import train_memorization

    cfg = MemConfig(n_corpus=16, dup_counts=(1, 2), per_count=1, n_heldout=2, n_layers=1, d_model=16, n_heads=2,
                    d_mlp=32, steps=6, eval_every=6, batch_size=4, lr=HUGE)
    with pytest.raises(TrainingDiverged, match="memorization training diverged"):
        train_memorization(cfg, progress=False)


def test_tuned_lens_training_diverges(one_thread):
    from uncover.lenses.tuned_lens_train import train_tuned_lens

    m, blocks = tiny("llama"), tokens(2, 8)
    for init in ("identity", "lstsq"):  # the lens feeds the final norm: the KL stays finite but rises
        with pytest.raises(TrainingDiverged, match="tuned lens training diverged: the loss rose"):
            train_tuned_lens(m, blocks, steps=5, lr=HUGE, batch_size=8, init=init, progress=False)
    lens = train_tuned_lens(m, blocks, steps=5, lr=1e-3, batch_size=8, progress=False)  # a sane lr trains
    assert lens.info["kl_after"] < lens.info["kl_before"]


def test_ccs_training_diverges():
    from uncover.probing.ccs import fit_ccs

    g = torch.Generator().manual_seed(0)
    with pytest.raises(TrainingDiverged, match="CCS training diverged"):
        fit_ccs(torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g), restarts=2, steps=10, lr=HUGE,
                pca=None)


def test_superposition_training_diverges():
    from uncover.neurons.superposition import train_toy_models

    with pytest.raises(TrainingDiverged, match="superposition training diverged"):
        train_toy_models(n_features=5, m=2, sparsities=(0.5,), steps=10, batch=16, lr=HUGE)


@pytest.mark.parametrize("method", ["rome", "memit"])
def test_edit_optimisation_diverges_and_leaves_the_model_unchanged(tmp_path, one_thread, method):
    import dataclasses

    from uncover.editing import rome
    from uncover.editing.memit import memit

    m = word_model()
    snap = snapshot(m)
    cfg = dataclasses.replace(CFG, lr=float("inf"))  # ROME clamps δ: only an infinite step overflows it
    req = ("{} is in the city of", "big ben", " rome")
    with pytest.raises(TrainingDiverged, match="the edit's value optimisation diverged"):
        if method == "rome":
            rome(m, *req, layer=1, mom2_samples=256, cache=tmp_path, config=cfg, progress=False)
        else:
            memit(m, [req], layers=[0, 1], mom2_samples=256, cache=tmp_path, config=cfg, progress=False)
    assert same(m, snap)
