"""Attribution graphs on the embedded model: removing or doubling a feature in the real model moves the target logit
the way the graph predicts (the agreement is printed), and the replacement model reproduces the real logits."""

from __future__ import annotations

import pytest
import torch

from uncover.graphs import attribution_graph, replacement_pass
from uncover.graphs.validate import agreement, feature_effects
from uncover.transcoders import QuickTranscoderSpec, quick_transcoders

pytestmark = pytest.mark.e2e

#: a quick set on the last two layers (briefly trained, cached; ~70 s cold on a loaded 2-core machine, seconds warm):
#: their features act on the logits mostly directly, so the
#: graph's linear predictions can be compared with removals in the real model, where the MLPs after a feature respond
#: freely (uncovered MLPs are frozen error nodes in the graph)
SPEC = QuickTranscoderSpec(layers=(28, 29), steps=30, n_blocks=8)


def test_graph_predicts_feature_removal_in_the_real_model(real):
    ts = quick_transcoders(real, SPEC, progress=False)
    prompt = "The capital of France is"
    rp = replacement_pass(real, ts, real.to_tokens(prompt)[0])
    with torch.no_grad():
        torch.testing.assert_close(rp.logits, real(prompt)[0], atol=1e-3, rtol=1e-4)
    g = attribution_graph(real, ts, prompt, [" Paris"], max_feature_nodes=64, batch_size=64)
    assert g.targets == [" Paris"] and g.target_probs[0] > 0.05
    df = feature_effects(real, ts, g, n=12)
    direct, total = agreement(df, "predicted_direct"), agreement(df, "predicted_total")
    print(f"\nfeature removal vs graph: Pearson r direct {direct:.3f}, total {total:.3f} over {len(df)} features")
    print(df.to_string(index=False))
    assert total > 0.7
    # the signs of the larger effects agree
    big = df[df["measured"].abs() > df["measured"].abs().median()]
    assert (torch.tensor(big["measured"].tolist()).sign() == torch.tensor(big["predicted_total"].tolist()).sign()).all()
    # steering the other way: doubling each feature's output
    up = feature_effects(real, ts, g, n=12, scale=1.0)
    r_up = agreement(up, "predicted_total")
    print(f"feature doubling vs graph: Pearson r total {r_up:.3f}")
    assert r_up > 0.7
