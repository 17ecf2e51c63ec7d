"""Path patching on the embedded model (Wang et al.'s IOI analysis): name movers and the heads feeding them."""

from __future__ import annotations

import pytest

from uncover.data.tasks import ioi
from uncover.patching.path import path_patching

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def abc(real):
    t = ioi(6, corrupt="abc").filter_correct(real).check(real)
    assert len(t) >= 3
    return t.pairs[:3]


def _args(pairs):
    return [p.clean for p in pairs], [p.corrupt for p in pairs], [p.answer for p in pairs], [p.wrong for p in pairs]


def test_name_movers_write_the_answer_to_the_logits(real, abc):
    r = path_patching(real, *_args(abc))
    assert r.clean_value > 2 > r.corrupt_value
    top = r.top(6)
    layer, head, effect = top[0]
    assert (layer, head) == (23, 3) and effect < -0.3  # the name mover DLA also finds
    assert all(la >= 20 for la, _, _ in top)  # the heads that act directly sit late
    assert any(v > 0.1 for _, _, v in top)  # negative name movers push the other way


def test_s_inhibition_heads_feed_the_name_movers_queries(real, abc):
    senders = [(la, h) for la in range(15, 23) for h in range(real.cfg.n_heads)]
    r = path_patching(real, *_args(abc), receivers=["L23H3.q", "L23H0.q"], receiver_positions=[-1],
                      senders=senders)
    layer, head, effect = r.top(1)[0]
    assert (layer, head) == (20, 0) and effect < 0  # small: each name mover has several inputs
    assert r.to_frame().shape[0] == len(senders)
