"""ITI on the embedded SmolLM2: steering the most truth-predictive heads raises the truthful answer.

What the model shows (docs/steering.md, ``docs/scripts/iti_vs_caa.py``): fitted on the true/false
statements of half the built-in facts (split by subject), ITI raises the probability of the true
object on the other half's prompts, for a KL on neutral text well below CAA's at a similar gain.
Asserted here with the heads of layers 8-15 only (where the best probes are; 72 probes instead of
270, so the test stays fast): the gain in p(true) and a small KL at the chosen strength.
"""

from __future__ import annotations

import random

import pytest
import torch

from uncover.data.corpus import token_blocks
from uncover.data.labelled import Labelled, _statements
from uncover.steering.iti import fit_iti
from uncover.steering.methods import steering

pytestmark = pytest.mark.e2e

ALPHA = 5.0


def split_facts(seed: int = 0) -> tuple[list, list]:
    """(train, test) rows ``(prompt, true, false, subject)`` of the built-in facts, split by subject."""
    rows = _statements(None, seed)
    subjects = sorted({r[3] for r in rows})
    random.Random(seed).shuffle(subjects)
    train = set(subjects[: len(subjects) // 2])
    return [r for r in rows if r[3] in train], [r for r in rows if r[3] not in train]


def statements(rows: list) -> Labelled:
    texts, labels, groups = [], [], []
    for prompt, o, f, s in rows:
        for obj, lab in ((o, 1), (f, 0)):
            texts.append(f"{prompt}{obj}.")
            labels.append(lab)
            groups.append(s)
    return Labelled("truth", texts, labels, groups, ("false", "true"))


@torch.no_grad()
def p_true(model, rows: list, steer) -> float:
    """Mean probability of the true object's first token at the end of each prompt."""
    tok = model.tokenizer
    ids = torch.tensor([tok(o, add_special_tokens=False)["input_ids"][0] for _, o, _, _ in rows])
    batch = model.tokenize([r[0] for r in rows])
    with steering(model, steer):
        logits = model(batch).float()
    last = logits[torch.arange(len(rows)), batch.columns(-1)[:, 0]]
    return float(last.softmax(-1).gather(1, ids[:, None]).mean())


@torch.no_grad()
def kl(model, steer, blocks: torch.Tensor) -> float:
    ref = model(blocks).float().log_softmax(-1)
    with steering(model, steer):
        lp = model(blocks).float().log_softmax(-1)
    return float((ref.exp() * (ref - lp)).sum(-1).mean())


@pytest.fixture(scope="module")
def fitted(real):
    train, test = split_facts()
    return fit_iti(real, statements(train), k=16, alpha=ALPHA, layers=range(8, 16)), test


def test_iti_raises_the_truthful_answer(real, fitted):
    iti, test = fitted
    base, steered = p_true(real, test, None), p_true(real, test, iti)
    assert steered > base + 0.03, (base, steered)


def test_iti_costs_little_kl_on_neutral_text(real, fitted):
    iti, _ = fitted
    blocks = token_blocks(real, block_len=64, split="heldout")[:2]
    assert kl(real, iti, blocks) < 0.1
