"""End-to-end: a tuned lens for the embedded SmolLM2-135M-Instruct, trained on the embedded corpus.

On held-out documents it must be closer to the model's final distribution than the logit
lens (the paper's main claim, Belrose et al. 2023, fig. 1), at most layers and on average.
"""

from __future__ import annotations

import pytest
import torch

from uncover.core.errors import UncoverError
from uncover.data.corpus import token_blocks
from uncover.lenses.logit_lens import logit_lens
from uncover.lenses.tuned_lens import TunedLens, tuned_lens
from uncover.lenses.tuned_lens_train import lens_kl, train_tuned_lens

pytestmark = pytest.mark.e2e

FACT = "The Eiffel Tower is in the city of"


@pytest.fixture(scope="module")
def lens(real):
    # a little smaller than the defaults, to keep the test near a minute on two CPU cores
    return train_tuned_lens(real, n_blocks=20, steps=15, progress=False)


@pytest.fixture(scope="module")
def heldout(real):
    held = token_blocks(real, block_len=32, split="heldout")
    return held[torch.linspace(0, len(held) - 1, 3).long()]  # 3 blocks spread over the held-out documents


def test_split_blocks_do_not_overlap(real):
    train = token_blocks(real, block_len=32, split="train")
    held = token_blocks(real, block_len=32, split="heldout")
    assert len(train) > 2 * len(held) > 0  # held-out: 10% of the documents, which differ in length
    assert not {tuple(b) for b in train.tolist()} & {tuple(b) for b in held.tolist()}


def test_tuned_lens_beats_logit_lens_on_heldout_text(real, lens, heldout):
    logit, tuned = lens_kl(real, heldout), lens_kl(real, heldout, lens)
    print(f"\nheld-out KL(final ‖ lens), nats, mean over {real.cfg.n_layers} layers: "
          f"logit {logit.mean():.3f}, tuned {tuned.mean():.3f}")
    print("logit:", [round(x, 2) for x in logit.tolist()])
    print("tuned:", [round(x, 2) for x in tuned.tolist()])
    assert tuned.mean() < 0.5 * logit.mean()
    assert (tuned < logit).sum() >= 0.8 * real.cfg.n_layers
    assert lens.info["kl_after"] < lens.info["kl_before"]


def test_tuned_lens_result_on_a_prompt(real, lens, tmp_path):
    a = logit_lens(real, FACT, targets=[" Paris"])
    b = tuned_lens(real, FACT, lens, targets=[" Paris"])
    assert b.lens == "tuned" and b.layers == a.layers == list(range(real.cfg.n_layers + 1))
    torch.testing.assert_close(b.top_probs[:, -1], a.top_probs[:, -1])  # the final layer is the model's output
    assert b.target_ranks[0, -1, -1, 0] == 0  # " Paris" is the model's top prediction
    assert b.kl_to_final[0, :-1].mean() < a.kl_to_final[0, :-1].mean()
    # the tuned lens finds " Paris" as the top token earlier than (or as early as) the logit lens
    first = [int((r.target_ranks[0, :, -1, 0] == 0).nonzero()[0]) for r in (a, b)]
    assert first[1] <= first[0]
    assert "Tuned lens" in b.to_html()

    path = lens.save(tmp_path / "smollm2.lens.safetensors")
    back = TunedLens.load(path, real)
    assert back.info == lens.info and back.model_name == real.name
    assert torch.equal(tuned_lens(real, FACT, back).top_probs, b.top_probs)
    with pytest.raises(UncoverError, match="n_layers=30, d_model=576"):
        TunedLens(3, 32, "tiny").check(real)
