"""Causal tracing and attribution patching on the embedded model (Meng et al. 2022; Syed et al. 2023).

What SmolLM2-135M shows (docs/tracing.md): on "The Eiffel Tower is in the city of", restoring
the hidden state of a subject token (" E"+"iffel": the token that names the entity) recovers
most of p(" Paris") from the embeddings up to layer ~21, and the last token carries it from
layer ~23 on; MLP restorations matter at that subject token in early layers, attention
restorations at the last token in late layers. Attribution patching tracks exact patching on
the IOI grids, except where early components saturate (MLP 0 at S2).
"""

from __future__ import annotations

import pytest
import torch

from uncover import Replace
from uncover.attribution.attribution_patching import compare_attribution
from uncover.patching.causal_tracing import causal_trace, noise_hook, noise_scale, subject_noise

pytestmark = pytest.mark.e2e

FACT, SUBJECT, OBJECT = "The Eiffel Tower is in the city of", "The Eiffel Tower", " Paris"
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
SAMPLES = 2


@pytest.fixture(scope="module")
def trace(real):
    return causal_trace(real, FACT, SUBJECT, OBJECT, kind="all", samples=SAMPLES)


def test_causal_tracing_pattern(trace):
    r = trace
    n, last = r.grids["hidden"].shape[0], len(r.str_tokens) - 1
    span = r.clean_prob - r.corrupt_prob
    assert r.subject == [0, 1, 2, 3] and r.clean_prob > 0.5 and r.corrupt_prob < 0.1
    hidden, mlp, attn = r.grids["hidden"], r.grids["mlp"], r.grids["attn"]
    # early and middle layers: the fact sits at a subject token, not yet at the last token
    assert hidden[:12, r.subject].max() > 0.4 * span
    assert hidden[:12, last].abs().max() < 0.1 * span
    # late layers: it has moved to the last token (exactly all of it after the last block)
    assert hidden[24:, last].min() > 0.5 * span
    assert abs(float(hidden[n - 1, last]) - span) < 1e-5
    # MLP restorations peak at a subject token in early-to-middle layers; attention at the last token, late
    m_layer, m_pos, m_val = r.peak("mlp")
    a_layer, a_pos, a_val = r.peak("attn")
    assert m_pos in r.subject and m_layer < 15 and m_val > 0.3 * span
    assert a_pos == last and a_layer >= 15 and a_val > 0.3 * span
    assert attn[:15, last].max() < 0.2 * span and mlp[20:, r.subject].max() < 0.1 * span


def test_causal_tracing_cells_equal_one_forward(real, trace):
    subj, n = trace.subject, real.cfg.n_layers
    eps = subject_noise(real, SAMPLES, len(subj), noise_scale(real))
    paris = real.to_single_token(OBJECT)
    names = [f"blocks.{j}.hook_mlp_out" for j in range(0, 7)] + ["blocks.5.hook_resid_post"]
    _, clean = real.run_with_cache(FACT, names=names)

    def mean_prob(restore):
        out = []
        for s in range(SAMPLES):
            with real.hooks([("hook_embed", noise_hook(subj, eps[s : s + 1]))]), real.intervene(restore):
                out.append(float(real(FACT)[0, -1].softmax(-1)[paris]))
        return sum(out) / SAMPLES

    base = mean_prob([])
    assert abs(base - trace.corrupt_prob) < 1e-5
    hid = mean_prob([Replace("blocks.5.hook_resid_post", source=clean["blocks.5.hook_resid_post"], positions=[2])])
    assert abs(hid - base - float(trace.grids["hidden"][5, 2])) < 1e-4
    # the MLP window around layer 2 is layers 0..6 (window 10, clipped)
    mlp = mean_prob([Replace(x, source=clean[x], positions=[2]) for x in names[:7]])
    assert abs(mlp - base - float(trace.grids["mlp"][2, 2])) < 1e-4
    assert n == 30


def test_attribution_patching_tracks_exact_patching_on_ioi(real):
    sites = [("resid_pre", "pos"), ("attn_out", "pos"), ("mlp_out", "pos"), ("z", "head")]
    c = compare_attribution(real, CLEAN, CORRUPT, " Mary", " John", sites=sites)
    corr = c.correlations().set_index("site")
    assert corr["pearson"].min() > 0.7
    assert corr.loc["attn_out/pos", "pearson"] > 0.9 and corr.loc["z/head", "pearson"] > 0.9
    exact, approx = {(r.hook, r.per): r for r in c.exact}, {(r.hook, r.per): r for r in c.approx}
    # the head that matters most is the same for both methods
    assert int(exact[("z", "head")].grid.abs().argmax()) == int(approx[("z", "head")].grid.abs().argmax())
    # near the output the first-order estimate is nearly exact: the last token's residual, late layers
    resid_exact, resid_approx = exact[("resid_pre", "pos")].grid, approx[("resid_pre", "pos")].grid
    last = resid_exact.shape[1] - 1
    torch.testing.assert_close(resid_approx[27:, last], resid_exact[27:, last], atol=0.1, rtol=0)
    # known failure mode (Syed et al. 2023): an early component that saturates is underestimated
    s2 = exact[("mlp_out", "pos")].first_diff
    assert exact[("mlp_out", "pos")].grid[0, s2] > 0.9 and approx[("mlp_out", "pos")].grid[0, s2] < 0.5


def test_cli_attribute_json_and_trace_usage_errors(tmp_path):
    import json
    import subprocess
    import sys

    exe = [sys.executable, "-m", "uncover.cli.main"]
    html = tmp_path / "attr.html"
    p = subprocess.run([*exe, "attribute", "--clean", CLEAN, "--corrupt", CORRUPT, "-a", " Mary", "-w", " John",
                        "--hook", "z", "--per", "head", "--json", "--html", str(html)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["kind"] == "AttributionResult" and len(doc["records"]) == 30 * 9 and html.exists()
    for args, message in [(["trace", "--task", "ioi"], "valid: facts"),
                          (["trace", "--prompt", "The Eiffel Tower is in"], "missing --prompt and --subject"),
                          (["attribute", "--clean", "a b", "--corrupt", "a", "-a", "x", "-w", "y", "--hook", "q"],
                           "valid: resid_pre, attn_out, mlp_out, z")]:
        p = subprocess.run([*exe, *args], capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and message in p.stderr, (args, p.stderr)
