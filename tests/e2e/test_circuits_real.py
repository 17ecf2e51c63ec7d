"""EAP on the embedded SmolLM2: an IOI circuit of a few hundred edges, and its known heads.

What the model shows (docs/circuits.md): the top EAP edges lead from L23H3 (the head
direct logit attribution already singles out as a name mover) and L24H4 into the logits;
faithfulness under corrupt ablation rises with the number of edges kept. Asserted here:
what is robust to the prompt sample.
"""

from __future__ import annotations

import pytest
import torch

from uncover.circuits.eap import eap
from uncover.circuits.faithfulness import faithfulness_curve
from uncover.circuits.prompts import Prompts
from uncover.data.tasks import ioi

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ioi_eap(real):
    t = ioi(16, seed=0).filter_correct(real)
    prompts = Prompts.from_task(real, t, 6)
    with torch.no_grad():
        return prompts, eap(real, prompts)


def test_name_mover_heads_lead_the_circuit(ioi_eap):
    _, c = ioi_eap
    assert c.graph.n_edges == 70651
    top = c.top(200)
    heads = [n for n in top.nodes() if n.startswith("L") and "." not in n]
    assert "L23H3" in heads[:5], heads[:10]
    # the strongest edge into the logits is from a late head, and corrupting it lowers the logit difference
    into_logits = [(a, s) for a, b, s in top.edges() if b == "logits"]
    assert into_logits[0][0] == "L23H3" and into_logits[0][1] < 0


def test_faithfulness_rises_with_edges(real, ioi_eap):
    prompts, c = ioi_eap
    curve = faithfulness_curve(real, c, prompts, [50, 200, 1000])
    assert curve.full > 0 > curve.empty  # corrupt ablation of everything flips the answer
    norm = curve.normalised
    assert norm[-1] > norm[0] and norm[-1] > 0.6, curve.summary()
