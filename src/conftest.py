"""Doctest fixtures: docstring examples run against the embedded model, bound to ``model``.

Also bound when an example names them: ``torch``, ``uncover``, ``tmp`` (a fresh temporary
folder, for examples that save files), ``prompts`` (4 IOI prompt pairs,
``Prompts.from_task(model, ioi(4))``, for the circuit examples), ``sae`` (an untrained TopK SAE on
``blocks.15.hook_resid_post``: 2304 latents, k = 32, seeded) and ``tiny`` (``tiny("llama")`` is a tiny
random model of ``tests/conftest.py``, for examples that train or rewrite weights).
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def _embedded_model():
    import uncover

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return uncover.load()


@pytest.fixture(scope="session")
def _ioi_prompts(_embedded_model):
    from uncover.circuits.prompts import Prompts
    from uncover.data.tasks import ioi

    return Prompts.from_task(_embedded_model, ioi(4))


def _random_sae():
    import torch

    from uncover.sae import TopKSAE
    from uncover.sae.base import SAEConfig

    with torch.random.fork_rng():
        torch.manual_seed(0)
        cfg = SAEConfig(d_in=576, d_sae=2304, architecture="topk", hook_name="blocks.15.hook_resid_post", k=32)
        return TopKSAE(cfg)


@pytest.fixture(autouse=True)
def _doctest_model(request, doctest_namespace):
    """Bind ``model`` (the embedded model), ``torch`` and the others for doctests that use them."""
    if request.node.__class__.__name__ != "DoctestItem":
        return
    import torch

    import uncover

    doctest_namespace["torch"] = torch
    doctest_namespace["uncover"] = uncover
    text = "\n".join(ex.source for ex in request.node.dtest.examples)
    if "model" in text:
        doctest_namespace["model"] = request.getfixturevalue("_embedded_model")
    if "prompts" in text:
        doctest_namespace["prompts"] = request.getfixturevalue("_ioi_prompts")
    if "sae" in text:
        doctest_namespace["sae"] = _random_sae()
    if "tmp" in text:
        doctest_namespace["tmp"] = request.getfixturevalue("tmp_path")
    if "tiny" in text:
        from tests.conftest import tiny

        doctest_namespace["tiny"] = tiny
