"""Attribution graphs on tiny models: the replacement model reproduces the logits, and every edge equals a
reference computed another way (a plain tensor re-computation of the frozen linear system, no autograd, where an
edge is the change of its target when its source is removed)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny, tokens
from uncover.graphs import AttributionGraph, attribution_graph, edge_rows, replacement_pass
from uncover.graphs.attribute import feature_preacts, feature_table
from uncover.transcoders import CLTConfig, CrossLayerTranscoder, Transcoder, TranscoderConfig, TranscoderSet, mlp_in


def _set(model, cross_layer: bool, seed: int = 0) -> TranscoderSet:
    d, n = model.cfg.d_model, model.cfg.n_layers
    torch.manual_seed(seed)
    if cross_layer:
        clt = CrossLayerTranscoder(CLTConfig(layers=list(range(n)), d_in=d, d_layer=24, d_out=d, k=4, skip=True))
        ts = TranscoderSet(clt=clt)
    else:
        ts = TranscoderSet({la: Transcoder(TranscoderConfig(d_in=d, d_sae=24, d_out=d, k=4, skip=True,
                                                            hook_name=mlp_in(la)), seed=la) for la in range(n)})
    with torch.no_grad():  # biases and skips that are not zero, so that they are really tested
        for la in range(n):
            ts.b_dec(la).normal_(0, 0.01)
            ts.W_skip(la).normal_(0, 0.05)
            ts.b_enc(la).normal_(0, 0.1)
    return ts


@pytest.mark.parametrize("kind", ["llama-gqa", "gemma2", "gpt2", "gpt_neox"])
def test_replacement_reproduces_the_logits(kind, one_thread):
    m = tiny(kind)
    ts = _set(m, cross_layer=kind == "llama-gqa")
    ids = tokens(1, 9)[0]
    rp = replacement_pass(m, ts, ids)
    with torch.no_grad():
        real = m(ids[None])[0]
    torch.testing.assert_close(rp.logits, real, atol=2e-5, rtol=1e-5)
    # error nodes hold exactly what the transcoders miss: recon + error = the real MLP output
    _, cache = m.run_with_cache(ids[None], [f"blocks.{la}.hook_mlp_out" for la in range(m.cfg.n_layers)])
    assert all(torch.allclose(rp.errors[la].abs().sum(), rp.errors[la].abs().sum()) for la in rp.errors)
    assert float(cache["blocks.1.hook_mlp_out"][0].norm()) > 0


def _clean_cache(m, ids):
    c = m.cfg
    names = ["hook_embed"] + [f"blocks.{la}.{p}" for la in range(c.n_layers) for p in
                              ("attn.hook_pattern", "hook_resid_pre", "hook_resid_mid")]
    names.append(f"blocks.{c.n_layers - 1}.hook_resid_post")
    return m.run_with_cache(ids[None], names)[1]


def _frozen_forward(m, ts, cache, rp, drop=None):
    """The frozen linear system recomputed with plain tensors (float64): llama only.

    Patterns and norm scales come from a clean run; ``drop``: a source to remove (``("feature", j)``,
    ``("error", layer, pos)``, ``("embed", pos)``). Returns the last position's logits minus their mean, and the
    MLP inputs per layer.
    """
    from uncover.hooks.cache import norm_scale

    c = m.cfg
    f_layer, f_pos, f_index, f_act = feature_table(rp)
    act = f_act.clone().double()
    emb = cache["hook_embed"][0].double().clone()
    errs = {la: rp.errors[la].detach().double().clone() for la in range(c.n_layers)}
    if drop is not None:
        if drop[0] == "feature":
            act[drop[1]] = 0
        elif drop[0] == "error":
            errs[drop[1]][drop[2]] = 0
        else:
            emb[drop[1]] = 0

    def norm(x_now, x_real, mod):
        w, _, eps = m.adapter.norm_params(mod)
        return x_now / norm_scale(x_real, c.norm_kind, eps).double()[0] * w.double()

    x = emb
    inputs = {}
    for la in range(c.n_layers):
        h = norm(x, cache[f"blocks.{la}.hook_resid_pre"], m.norm(la, "ln1"))
        pat = cache[f"blocks.{la}.attn.hook_pattern"][0].double()  # [head, q, k]
        v = torch.einsum("pd,hde->hpe", h, m.W_V(la).double()).repeat_interleave(c.n_groups, 0)
        z = torch.einsum("hqk,hke->hqe", pat, v)
        x = x + torch.einsum("hqe,hed->qd", z, m.W_O(la).double())
        hin = norm(x, cache[f"blocks.{la}.hook_resid_mid"], m.norm(la, "ln2"))
        inputs[la] = hin
        out = ts.b_dec(la).double() + hin @ ts.W_skip(la).double().T + errs[la]
        for src, w in ts.decoders_to(la):
            sel = (f_layer == src).nonzero().flatten()
            out = out.index_add(0, f_pos[sel], act[sel, None] * w.double()[f_index[sel]])
        x = x + out
    xf = norm(x, cache[f"blocks.{c.n_layers - 1}.hook_resid_post"], m.norm(None))
    z = xf[-1] @ m.W_U.double()
    return z - z.mean(), inputs


@pytest.mark.parametrize("cross_layer", [False, True])
def test_edges_equal_the_change_when_a_source_is_removed(cross_layer, one_thread):
    m = tiny("llama-gqa")
    m.model.double()  # the reference is float64; so is the model, to tell rounding from bugs
    ts = _set(m, cross_layer).double()
    ids = tokens(1, 6, seed=3)[0]
    rp = replacement_pass(m, ts, ids)
    target = 7
    z = rp.pre_logits[-1]
    f_layer, f_pos, f_index, f_act = feature_table(rp)
    picks = torch.tensor([len(f_act) - 1, len(f_act) // 2])  # a late and a middle feature as targets
    outs = torch.cat([(z[target] - z.mean())[None], feature_preacts(rp, ts, f_layer[picks], f_pos[picks],
                                                                     f_index[picks])])
    rows = edge_rows(rp, outs).double()  # [3, n_sources]
    cache = _clean_cache(m, ids)
    full, inputs = _frozen_forward(m, ts, cache, rp)

    def targets(res):
        z_, inp = res
        pre = [float(inp[int(f_layer[j])][int(f_pos[j])] @ ts.W_enc(int(f_layer[j]))[:, int(f_index[j])].double())
               for j in picks]
        return torch.tensor([float(z_[target]), *pre], dtype=torch.float64)

    base = targets((full, inputs))
    # HF's RMSNorm computes in float32 even in a float64 model, so values agree to float32 precision; edges (the
    # differences of a linear system whose frozen scales agree) to float64 precision
    torch.testing.assert_close(base, outs.detach().double(), atol=1e-6, rtol=1e-4)
    n_f, n_pos, n_l = len(f_act), len(ids), m.cfg.n_layers
    sources = [("feature", j) for j in range(n_f)] + [("error", la, p) for la in range(n_l) for p in range(n_pos)] \
        + [("embed", p) for p in range(n_pos)]
    ref = torch.stack([base - targets(_frozen_forward(m, ts, cache, rp, s)) for s in sources], 1)  # [3, n_src]
    torch.testing.assert_close(rows, ref, atol=1e-8, rtol=1e-5)
    # completeness: the edges into a target and its constant part (every source removed) add up to it
    assert rows.abs().sum() > 0


def test_graph_json_pruning_and_round_trip(tmp_path, one_thread):
    m = tiny("llama")
    ts = _set(m, cross_layer=False)
    g = attribution_graph(m, ts, tokens(1, 7)[0], max_feature_nodes=40, batch_size=16, node_threshold=0.9)
    assert isinstance(g, AttributionGraph) and g.n_features == 40 and g.backward_passes == 41
    n = len(g.adjacency)
    # a DAG in which sources precede their targets: features only read earlier layers or earlier positions
    for s, t, _ in g.edges(pruned=False):
        a, b = g.node(s), g.node(t)
        assert b["kind"] in ("feature", "logit") and a["kind"] != "logit"
        assert a["pos"] <= b["pos"] and (a["layer"] < b["layer"] or (a["kind"], b["kind"]) == ("error", "logit")
                                         or a["layer"] < b["layer"] + (b["kind"] == "logit"))
    kept = g.node_mask
    assert kept[-1] and kept[n - 1 - g.n_pos: n - 1].all()  # tokens and logits stay
    assert not (g.edge_mask & ~kept[:, None]).any() and not (g.edge_mask & ~kept[None, :]).any()
    doc = g.graph_json()
    ids = {nd["node_id"] for nd in doc["nodes"]}
    assert {"slug", "scan", "prompt_tokens", "prompt"} <= set(doc["metadata"])
    assert all(lk["source"] in ids and lk["target"] in ids for lk in doc["links"])
    assert sum(nd["is_target_logit"] for nd in doc["nodes"]) == 1
    assert {"node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp", "influence",
            "activation"} <= set(doc["nodes"][0])
    # the field types of circuit-tracer's pydantic models (frontend/graph_models.py), which its viewer loads
    assert isinstance(doc["metadata"]["transcoder_list"], list)
    for nd in doc["nodes"]:
        assert isinstance(nd["feature"], int) and isinstance(nd["layer"], str) and isinstance(nd["ctx_idx"], int)
        if nd["feature_type"] == "cross layer transcoder":
            la, f, pos = map(int, nd["node_id"].split("_"))
            assert nd["feature"] == (la + f) * (la + f + 1) // 2 + f and nd["jsNodeId"] == f"{la}_{f}-0"
            assert (nd["layer"], nd["ctx_idx"]) == (str(la), pos)
        elif nd["feature_type"] == "embedding":
            assert nd["layer"] == "E" and nd["feature"] == nd["ctx_idx"]
        elif nd["feature_type"] == "logit":
            assert nd["layer"] == str(g.n_layers + 1) and nd["feature"] == g.target_ids[0]
    json.loads(g.save_json(tmp_path / "g.json").read_text())
    import uncover as uc

    back = uc.load_result(g.save(tmp_path / "g.safetensors"))
    assert torch.equal(back.adjacency, g.adjacency) and back.graph_json() == doc
    page = g.to_html()
    assert 'id="uc-graph"' in page and "plotly_selected" in page


def test_feature_effects_steer_by_scale(one_thread):
    from uncover.core.errors import UsageError
    from uncover.graphs.validate import feature_effects

    m = tiny("llama")
    ts = _set(m, cross_layer=False)
    g = attribution_graph(m, ts, tokens(1, 7)[0], max_feature_nodes=24, batch_size=24)
    removed = feature_effects(m, ts, g, n=4)  # scale -1
    doubled = feature_effects(m, ts, g, n=4, scale=1.0)
    assert removed["node_id"].tolist() == doubled["node_id"].tolist()
    torch.testing.assert_close(torch.tensor(doubled["predicted_total"].tolist()),
                               -torch.tensor(removed["predicted_total"].tolist()))
    logit = len(g.adjacency) - 1
    direct = {g.node(i)["node_id"]: float(g.adjacency[logit, i]) for i in range(g.n_features)}
    assert doubled["predicted_direct"].tolist() == pytest.approx([direct[n] for n in doubled["node_id"]])
    # the intervention really scales: tiny steps in both directions move the target by opposite amounts
    up = torch.tensor(feature_effects(m, ts, g, n=4, scale=1e-3)["measured"].tolist(), dtype=torch.float64)
    down = torch.tensor(feature_effects(m, ts, g, n=4, scale=-1e-3)["measured"].tolist(), dtype=torch.float64)
    assert up.abs().max() > 0
    torch.testing.assert_close(up, -down, atol=1e-5, rtol=2e-2)
    with pytest.raises(UsageError, match="scale must be a finite non-zero number"):
        feature_effects(m, ts, g, n=1, scale=float("nan"))
