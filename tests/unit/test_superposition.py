"""Toy models of superposition: the dense/sparse transition, dimensionality identities, batched = separate."""

from __future__ import annotations

import pytest
import torch

from uncover.core.errors import UncoverError
from uncover.neurons.superposition import ToyModels, train_toy_models


@pytest.fixture(scope="module")
def models() -> ToyModels:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_toy_models(n_features=10, m=3, sparsities=[0.0, 0.95], importance_decay=0.7, steps=1500,
                                batch=512, lr=3e-3)
    finally:
        torch.set_num_threads(n)


def test_transition(models):
    dense, sparse = models.n_represented()
    assert dense <= 3  # no superposition: at most m features
    assert sparse > 3  # superposition: more features than dimensions
    norms = models.norms()
    assert (norms[0, :3] > 0.9).all()  # dense: the m most important features, each with a full dimension
    assert float(models.interference()[0, :3].max()) < 0.1  # only a faint 4th feature overlaps


def test_dimensionality_identities(models):
    dims = models.dimensionality()
    # explicit loop reference for D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2
    w = models.W[1]
    for i in range(w.shape[1]):
        wi = w[:, i]
        ref = wi.norm() ** 2 / sum(float((wi / wi.norm()) @ w[:, j]) ** 2 for j in range(w.shape[1]))
        assert float(dims[1, i]) == pytest.approx(float(ref), rel=1e-4)
    # dense case: orthogonal represented features have dimensionality 1 each, summing to about m
    assert float(dims[0, :3].sum()) == pytest.approx(3.0, abs=0.1)
    frame = models.to_frame()
    assert len(frame) == 20 and set(frame["sparsity"]) == {0.0, 0.95}
    assert models.plot() is not None and models.dimensionality_figure() is not None


def test_bad_arguments():
    with pytest.raises(UncoverError, match="0 < m < n_features"):
        train_toy_models(n_features=3, m=3)
    with pytest.raises(UncoverError, match="sparsities"):
        train_toy_models(sparsities=[1.0])


def test_cli(capsys):
    import json

    from uncover.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["superposition", "--features", "6", "--dims", "2", "--sparsity", "0,0.9", "--steps", "20", "--json"])
    assert e.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "ToyModels" and len(doc["records"]) == 12
    with pytest.raises(SystemExit) as e:
        main(["superposition", "--sparsity", "dense"])
    assert e.value.code == 2
    assert "comma-separated" in capsys.readouterr().err
