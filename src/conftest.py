"""Doctest fixtures: docstring examples run against the embedded model, bound to ``model``."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def _embedded_model():
    import uncover

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return uncover.load()


@pytest.fixture(autouse=True)
def _doctest_model(request, doctest_namespace):
    """Bind ``model`` (the embedded model) and ``torch`` for doctests that use them; other tests load nothing."""
    if request.node.__class__.__name__ != "DoctestItem":
        return
    import torch

    doctest_namespace["torch"] = torch
    text = "\n".join(ex.source for ex in request.node.dtest.examples)
    if "model" in text:
        doctest_namespace["model"] = request.getfixturevalue("_embedded_model")
