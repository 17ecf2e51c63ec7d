"""Results that last, on the embedded model: the README's examples rerun and reproduce from their saved files, and
a ROME edit's causal trace compares before and after (the model's fingerprint changes, then reverts)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import uncover as uc
from uncover.ops.provenance import weights_fingerprint

pytestmark = pytest.mark.e2e

IOI = dict(clean="When Mary and John went to the store, John gave a drink to",
           corrupt="When Mary and John went to the store, Mary gave a drink to", answer=" Mary", wrong=" John")

README_EXAMPLES = [
    ("lens", {"prompt": "The Eiffel Tower is in the city of", "targets": [" Paris"]}),
    ("dla", {"prompt": IOI["clean"], "answer": " Mary", "wrong": " John"}),
    ("patch", IOI),
]


@pytest.mark.parametrize("name, config", README_EXAMPLES, ids=[n for n, _ in README_EXAMPLES])
def test_readme_examples_rerun_and_reproduce(real, tmp_path, name, config):
    r = uc.run(name, real, **config)
    path = r.save(tmp_path / f"{name}.safetensors")
    verdict, again = uc.rerun(uc.load_result(path), real)
    assert verdict.reproduced and verdict.same_weights, verdict.summary()
    assert again.provenance.config == r.provenance.config


def test_cli_rerun_says_it_reproduces(tmp_path):
    f = tmp_path / "lens.safetensors"
    run = [sys.executable, "-m", "uncover.cli.main"]
    p = subprocess.run([*run, "lens", "The Eiffel Tower is in the city of", "-t", " Paris", "--result", str(f)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    q = subprocess.run([*run, "rerun", str(f)], capture_output=True, text=True, timeout=300)
    assert q.returncode == 0 and "lens: reproduces" in q.stdout, q.stdout + q.stderr


def test_compare_a_rome_edits_causal_trace_before_and_after(real, tmp_path):
    trace = {"prompt": "The Eiffel Tower is in the city of", "subject": "The Eiffel Tower", "answer": " Paris",
             "kind": "mlp", "samples": 2, "window": 5}
    before_fp = weights_fingerprint(real.model)
    before = uc.run("trace", real, **trace)
    report = uc.run("edit", real, prompt="{} is in the city of", subject="The Eiffel Tower", target=" Rome",
                    method="rome", layer=1, gen_tokens=0)
    try:
        after = uc.run("trace", real, **trace)
    finally:
        report.revert()
    assert weights_fingerprint(real.model) == before_fp
    a = uc.load_result(before.save(tmp_path / "before.safetensors"))
    b = uc.load_result(after.save(tmp_path / "after.safetensors"))
    c = uc.compare(a, b)
    assert c.config_changes == {}  # the same trace ...
    assert list(c.model_changes) == ["fingerprint"]  # ... of a model whose weights changed
    assert c.b.clean_prob < 0.5 * c.a.clean_prob  # p(Paris) collapses after the edit
    assert any(d["path"].startswith("grids") for d in c.differences) and "Side by side" in c.to_html()
