"""The prompt view's pieces against references computed another way: the in-place lens top-1 against a softmax of
the model's own decoding (families with a final soft-cap and a logit scale included), and JSON rounding."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny
from uncover.hooks.decode import decode_resid
from uncover.serve.common import rounded
from uncover.serve.prompt import lens_top1


@pytest.mark.parametrize("kind", ["llama", "gemma2", "gpt2"])
def test_lens_top1_is_the_softmax_max_of_the_decoded_residual(kind):
    m = tiny(kind)
    g = torch.Generator().manual_seed(0)
    resid = torch.randn(10, m.cfg.d_model, generator=g) * 3
    with torch.no_grad():
        p = torch.softmax(decode_resid(m, resid).double(), -1)  # float64 reference
    for chunk in (3, 10, 640):  # chunks that split the rows unevenly, exactly, and not at all
        ids, probs = lens_top1(m, resid, chunk=chunk)
        assert torch.equal(ids, p.argmax(-1))
        torch.testing.assert_close(probs.double(), p.amax(-1), atol=1e-6, rtol=0)


def test_rounded_is_json_ready():
    t = torch.tensor([[0.123456, float("nan")], [float("inf"), -2.5]])
    assert rounded(t, 3) == [[0.123, None], [None, -2.5]]
    assert rounded(torch.tensor(1 / 3), 2) == 0.33 and rounded(torch.zeros(0)) == []
