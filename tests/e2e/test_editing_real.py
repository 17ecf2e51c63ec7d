"""ROME on the embedded model (Meng et al. 2022): the Eiffel Tower moves to Rome, and only it.

One edit with a small key-statistics sample (cached in a temporary directory) and the default
layer (causal tracing's choice for this model, docs/editing.md). A knowledge-neuron edit
(Dai et al. 2022) of the same fact flips it too and reverts bit-exactly.
"""

from __future__ import annotations

import pytest
import torch

from uncover.core.threads import torch_threads
from uncover.data.counterfact import known
from uncover.editing import Edit, EditError, RomeConfig, kn_edit, rome
from uncover.editing.base import down_proj_path
from uncover.editing.evaluate import object_logprobs

pytestmark = pytest.mark.e2e

PROMPT, SUBJECT = "{} is in the city of", "The Eiffel Tower"
PARAPHRASE = "Where is the Eiffel Tower? It is in the city of"
NEIGHBOUR = "The Louvre is in the city of"


def top(model, text: str) -> str:
    with torch.no_grad():
        return model.tokenizer.decode([int(model(text)[0, -1].argmax())])


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("editing-cache")


def test_counterfacts_are_known(real):
    assert len(known(real)) >= 20


def test_rome_moves_the_eiffel_tower(real, stats_dir, tmp_path):
    text = PROMPT.format(SUBJECT)
    with torch.no_grad():
        clean_logits = real(text)
        lp0 = object_logprobs(real, [text, PARAPHRASE, NEIGHBOUR], [" Paris", " Rome"])
    assert top(real, text) == " Paris" and top(real, NEIGHBOUR) == " Paris"
    e = rome(real, PROMPT, SUBJECT, " Rome", mom2_samples=2048, cache=stats_dir,
             config=RomeConfig(prefixes=2), progress=False)
    key = down_proj_path(real, e.layers[0])
    params = dict(real.model.named_parameters())
    edited_w = params[key].detach().clone()
    try:
        with torch.no_grad():
            lp1 = object_logprobs(real, [text, PARAPHRASE, NEIGHBOUR], [" Paris", " Rome"])
        assert top(real, text) == " Rome"  # efficacy
        assert lp1[1, 1] - lp1[1, 0] > lp0[1, 1] - lp0[1, 0] + 2.0  # the paraphrase moves towards Rome
        assert top(real, NEIGHBOUR) == " Paris" and lp1[2, 0] > lp1[2, 1]  # the neighbour keeps its answer
        e.save(tmp_path / "edit")
    finally:
        e.revert()
    with torch.no_grad():
        assert torch.equal(real(text), clean_logits)  # revert is bit-exact
    assert torch.equal(params[key], e.originals[key])

    import uncover

    fresh = uncover.load()
    loaded = Edit.load(tmp_path / "edit", fresh)
    assert torch.equal(dict(fresh.model.named_parameters())[key], edited_w)  # re-applies identically
    assert top(fresh, text) == " Rome"
    loaded.revert()
    assert top(fresh, text) == " Paris"


def test_bad_edit_leaves_model_untouched(real, stats_dir):
    text = PROMPT.format(SUBJECT)
    with torch.no_grad():
        before = real(text)
    with pytest.raises(EditError, match="valid: 0 to 29"):
        rome(real, PROMPT, SUBJECT, " Rome", layer=30, cache=stats_dir)
    with pytest.raises(EditError, match="not in the prompt"):
        rome(real, "The Louvre is in the city of", SUBJECT, " Rome", cache=stats_dir)
    with torch.no_grad():
        assert torch.equal(real(text), before)


def test_kn_edit_flips_the_fact_and_reverts(real):
    text = PROMPT.format(SUBJECT)
    with torch.no_grad():
        clean = real(text)
    with torch_threads(1):  # ≈ 6 s of CPU; more threads only spin on a shared machine
        e = kn_edit(real, PROMPT, SUBJECT, " Rome", old=" Paris", margin=1.0)
    try:
        lp = object_logprobs(real, [text], [" Paris", " Rome"])[0]
        assert top(real, text) == " Rome" and float(lp[1] - lp[0]) >= 1.0 - 1e-3  # efficacy with the margin asked
        assert e.method == "kn-update" and 1 <= len(e.options["neurons"]) <= 10
        assert all(layer >= real.cfg.n_layers // 2 for layer, _ in e.options["neurons"])  # the default layers
    finally:
        e.revert()
    with torch.no_grad():
        assert torch.equal(real(text), clean)
