"""Circuit discovery on tiny models: graph, per-receiver gradients, EAP, exact edge patching, ACDC, JSON.

References are computed another way: receiver gradients and EAP scores against central
finite differences (float64) of a two-pass hand-made intervention in which one receiver
really reads its own copy of the residual (a second forward pass supplies its q/k/v or
MLP input), exact edge patching against that same intervention, batched ACDC against a
naive one-run-per-edge sequential ACDC.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny, tokens
from uncover.circuits.acdc import acdc
from uncover.circuits.activations import capture, point_list, receiver_grads, unflatten
from uncover.circuits.circuit import Circuit
from uncover.circuits.eap import eap
from uncover.circuits.faithfulness import circuit_metrics, faithfulness, faithfulness_curve
from uncover.circuits.graph import Graph, edge_count
from uncover.circuits.patch import EdgePatcher
from uncover.circuits.prompts import Prompts, metric_values
from uncover.core.errors import UncoverError, UnsupportedModel
from uncover.hooks.tokens import Batch

FAMILIES = ["llama-gqa", "gpt2", "gpt_neox", "qwen3"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny64(kind: str):
    """A float64 tiny model whose RMSNorms really compute in float64 (HF's upcast to float32 would
    otherwise limit finite differences to float32 precision)."""
    import types

    model = tiny(kind, dtype=torch.float64)

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    for mod in model.model.modules():
        if type(mod).__name__.endswith("RMSNorm"):
            mod.forward = types.MethodType(forward, mod)
    return model


def prompts_for(model, n=2, pos=6, pad=False) -> Prompts:
    clean = tokens(n, pos, seed=1)
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 7) % 60 + 3
    mask = torch.ones_like(clean)
    if pad:  # last row shorter (right padding)
        mask[-1, -2:] = 0
    last = mask.sum(1) - 1
    return Prompts(Batch(clean, mask), Batch(corrupt, mask), torch.arange(5, 5 + n), torch.arange(20, 20 + n), last)


def mean_metric(model, prompts, logits) -> torch.Tensor:
    return metric_values("logit_diff", prompts.last_logits(logits), prompts).mean()


# ---- graph ---------------------------------------------------------------------------------
def brute_force_edges(n_layers, n_heads, n_kv, parallel) -> int:
    """Count by the rules in words: who has written to the residual before each receiver reads it."""
    total = 0
    for layer in range(n_layers):
        before_attn = 1 + layer * (n_heads + 1)  # input, earlier heads and MLPs
        total += (n_heads + 2 * n_kv) * before_attn
        total += before_attn + (0 if parallel else n_heads)  # the MLP also sees this block's heads unless parallel
    return total + 1 + n_layers * (n_heads + 1)


@pytest.mark.parametrize("shape", [(30, 9, 3, False), (3, 4, 2, False), (3, 4, 4, True), (1, 2, 1, False)])
def test_edge_counts(shape):
    g = Graph(*shape)
    assert g.n_edges == edge_count(*shape) == brute_force_edges(*shape)
    assert g.valid.shape == (g.n_senders, g.n_receivers)


def test_embedded_model_edge_count():
    g = Graph(30, 9, 3)
    assert (g.n_senders, g.n_receivers, g.n_edges) == (301, 481, 70651)


def test_graph_from_models():
    assert Graph.from_model(tiny("gpt_neox")).parallel
    assert not Graph.from_model(tiny("gpt_neox-seq")).parallel
    g = Graph.from_model(tiny("llama-gqa"))
    assert g.receivers[g.layer_receivers(1)][4:6] == ["L1KV0.k", "L1KV1.k"]
    with pytest.raises(UnsupportedModel, match="supported families"):
        Graph.from_model(tiny("gemma2"))
    with pytest.raises(UncoverError, match="did you mean"):
        g.sender_index("L1H9")


# ---- a hand-made per-receiver intervention (the reference) ---------------------------------
def receiver_run(model, prompts, receiver: str, delta: torch.Tensor) -> torch.Tensor:
    """Logits when only ``receiver`` reads ``its residual + delta`` ``[batch, pos, d_model]``.

    Pass 1 adds ``delta`` to the residual the receiver reads and records what the receiver
    computes from it (its q/k/v slice, or the MLP's normed input); pass 2 is the clean run
    with only that value replaced. The final residual is patched directly.
    """
    c = model.cfg
    batch = prompts.clean
    if receiver == "logits":
        last = f"blocks.{c.n_layers - 1}.hook_resid_post"
        return model.run_with_hooks(batch, [(last, lambda v, hp: v + delta.to(v.dtype))])
    node, kind = (receiver.split(".") + ["mlp"])[:2]
    if node.startswith("MLP"):
        layer = int(node[3:])
        where = "hook_resid_pre" if c.parallel_attn_mlp else "hook_resid_mid"
        point, index = f"blocks.{layer}.ln2.hook_normalized", None
    else:
        layer, index = (int(x) for x in node[1:].replace("KV", "H").split("H"))
        where, point = "hook_resid_pre", f"blocks.{layer}.attn.hook_{kind}"
    seen = {}
    model.run_with_hooks(batch, [(f"blocks.{layer}.{where}", lambda v, hp: v + delta.to(v.dtype)),
                                 (point, lambda v, hp: seen.setdefault("v", v.clone()))])

    def put(v, hp):
        out = v.clone()
        if index is None:
            return seen["v"]
        out[:, :, index] = seen["v"][:, :, index]
        return out

    return model.run_with_hooks(batch, [(point, put)])


RECEIVERS = ["L2H3.q", "L1KV1.k", "L2KV0.v", "L1H2.q", "MLP1", "MLP2", "logits"]


def names_for(model, r: str) -> str:
    return r.replace("KV", "H") if model.cfg.n_kv_heads == model.cfg.n_heads else r


@pytest.mark.parametrize("kind", FAMILIES)
def test_receiver_gradient_equals_finite_difference(kind):
    model = tiny64(kind)
    g = Graph.from_model(model)
    p = prompts_for(model, pad=True)
    cap = capture(model, g, p.clean, senders=False, track=True)
    m = mean_metric(model, p, cap.logits)
    flat = torch.autograd.grad(m, point_list(cap.points))
    grads = receiver_grads(model, g, cap, unflatten(cap.points, list(flat)))
    gen = torch.Generator().manual_seed(0)
    for r in RECEIVERS:
        r = names_for(model, r)
        delta = torch.randn(*p.clean.input_ids.shape, model.cfg.d_model, generator=gen, dtype=torch.float64)
        eps = 1e-6
        fd = (mean_metric(model, p, receiver_run(model, p, r, eps * delta))
              - mean_metric(model, p, receiver_run(model, p, r, -eps * delta))) / (2 * eps)
        analytic = (grads[g.receiver_index(r)] * delta).sum()
        assert float(analytic.detach()) == pytest.approx(float(fd.detach()), rel=1e-5, abs=1e-8), r


def sender_diff(model, prompts, sender: str) -> torch.Tensor:
    """``a_u(corrupt) − a_u(clean)`` from ordinary caches (``hook_result``, ``hook_mlp_out``, ``hook_embed``)."""
    if sender == "input":
        name, head = "hook_embed", None
    elif sender.startswith("MLP"):
        name, head = f"blocks.{sender[3:]}.hook_mlp_out", None
    else:
        layer, head = (int(x) for x in sender[1:].split("H"))
        name = f"blocks.{layer}.attn.hook_result"
    _, a = model.run_with_cache(prompts.corrupt, [name])
    _, b = model.run_with_cache(prompts.clean, [name])
    d = a[name] - b[name]
    return d if head is None else d[:, :, head]


EDGES = [("L0H1", "L2H3.q"), ("input", "L1KV1.k"), ("MLP0", "L2KV0.v"), ("L1H2", "MLP1"), ("L1H0", "MLP2"),
         ("MLP2", "logits"), ("L0H3", "logits")]


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt_neox"])
def test_eap_score_is_the_first_order_change(kind):
    model = tiny64(kind)
    p = prompts_for(model, pad=True)
    c = eap(model, p)
    g = c.graph
    for s, r in EDGES:
        r = names_for(model, r)
        if not g.valid[g.sender_index(s), g.receiver_index(r)]:
            continue  # the MLP of a parallel block does not read its own heads
        d = sender_diff(model, p, s)
        eps = 1e-6
        fd = (mean_metric(model, p, receiver_run(model, p, r, eps * d))
              - mean_metric(model, p, receiver_run(model, p, r, -eps * d))) / (2 * eps)
        assert float(c.scores[g.sender_index(s), g.receiver_index(r)]) == pytest.approx(float(fd.detach()), rel=1e-5,
                                                                                         abs=1e-10), (s, r)
    assert (c.scores[~g.valid] == 0).all() and c.n_edges == g.n_edges


def test_eap_ig_one_step_is_eap_and_batching_does_not_matter():
    model = tiny64("llama-gqa")
    p = prompts_for(model)
    a = eap(model, p)
    with torch.no_grad():  # works under a caller's no_grad too
        b = eap(model, p, method="eap-ig", steps=1)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-8)
    c3 = eap(model, p, method="eap-ig", steps=3)
    c1 = eap(model, p, method="eap-ig", steps=3, batch_steps=1)
    torch.testing.assert_close(c3.scores, c1.scores, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(c3.scores, a.scores)
    with pytest.raises(UncoverError, match="valid: eap, eap-ig"):
        eap(model, p, method="acdcx")


# ---- exact edge patching -------------------------------------------------------------------
@pytest.mark.parametrize("kind", FAMILIES)
def test_edge_patch_equals_hand_made_intervention(kind):
    model = tiny64(kind)
    p = prompts_for(model, pad=True)
    patcher = EdgePatcher(model, p, "corrupt")
    g = patcher.graph
    cases = [(("L0H1",), "L2H3.q"), (("L0H0",), "L1KV1.k"),
             (("input", "L0H2"), "L2KV0.v"), (("MLP0", "L1H3"), "MLP1"), (("L2H1", "MLP1"), "logits")]
    masks, refs = [], []
    for senders, r in cases:
        r = names_for(model, r)
        # a parallel block's MLP does not read its own heads: such edges do not exist
        senders = [s for s in senders if g.valid[g.sender_index(s), g.receiver_index(r)]]
        mask = torch.zeros_like(g.valid)
        for s in senders:
            mask[g.sender_index(s), g.receiver_index(r)] = True
        delta = sum(sender_diff(model, p, s) for s in senders)
        masks.append(mask)
        refs.append(p.last_logits(receiver_run(model, p, r, delta)))
    out = patcher.run(torch.stack(masks))  # all cases in one batched run
    for i in range(len(cases)):
        torch.testing.assert_close(out[i], refs[i], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("ablation", ["corrupt", "mean"])
def test_faithfulness_of_full_and_empty_circuits(ablation):
    model = tiny64("llama-gqa")
    p = prompts_for(model, n=3, pad=True)
    c = eap(model, p)
    patcher = EdgePatcher(model, p, ablation)
    full, empty = circuit_metrics(patcher, [c, c.top(0)])
    clean = float(metric_values("logit_diff", patcher.clean_logits, p).mean())
    assert full == clean  # nothing removed: the model's own computation, bit for bit
    assert faithfulness(model, c, p, ablation=ablation) == pytest.approx(1.0, abs=1e-12)
    if ablation == "corrupt":  # every receiver reads the corrupt residual: the corrupt run
        base = float(metric_values("logit_diff", patcher.corrupt_logits, p).mean())
    else:  # the logits read the sum of mean sender outputs (+ biases): the mean final residual
        _, cache = model.run_with_cache(p.clean, [f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"])
        x = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
        m = p.clean.attention_mask[:, :, None].double()
        mean = ((x * m).sum(0) / m.sum(0)).expand_as(x)
        from uncover.hooks.decode import decode_resid

        base = float(metric_values("logit_diff", decode_resid(model, p.last_logits(mean)), p).mean().detach())
    assert empty == pytest.approx(base, rel=1e-9, abs=1e-9)
    curve = faithfulness_curve(model, c, p, [5, 50, 10_000], ablation=ablation)
    assert curve.counts[-1] == g_edges(c) and curve.fraction[-1] == pytest.approx(1.0)
    assert curve.empty == pytest.approx(base) and len(curve.to_frame()) == 3
    curve.plot()


def g_edges(c: Circuit) -> int:
    return c.graph.n_edges


def test_start_layer_equals_full_run():
    model = tiny64("llama-gqa")
    p = prompts_for(model)
    patcher = EdgePatcher(model, p)
    g = patcher.graph
    masks = torch.zeros(2, *g.valid.shape, dtype=torch.bool)
    masks[0, g.sender_index("L0H1"), g.receiver_index("L2H0.q")] = True
    masks[1, g.sender_index("L1H1"), g.receiver_index("MLP2")] = True
    torch.testing.assert_close(patcher.run(masks, start=2), patcher.run(masks), rtol=1e-10, atol=1e-10)
    with pytest.raises(UncoverError, match="earlier receivers"):
        patcher.run(masks, start=3)


# ---- ACDC ----------------------------------------------------------------------------------
def naive_acdc(patcher, prompts, tau, metric):
    """Sequential ACDC, one full run per tried edge."""
    g = patcher.graph
    ref = patcher.clean_logits

    def value(mask):
        logits = patcher.run(mask[None])[0]
        return float(metric_values(metric, logits, prompts, ref if metric == "kl" else None).mean())

    removed = torch.zeros_like(g.valid)
    cur = value(removed)
    for r in reversed(range(g.n_receivers)):
        for u in reversed(g.valid[:, r].nonzero().flatten().tolist()):
            removed[u, r] = True
            new = value(removed)
            dmg = new - cur if metric == "kl" else cur - new
            if dmg < tau:
                cur = new
            else:
                removed[u, r] = False
    return g.valid & ~removed


@pytest.mark.parametrize("metric,tau", [("kl", 2e-5), ("logit_diff", 3e-3)])
def test_acdc_matches_sequential_and_its_threshold_logic(metric, tau):
    model = tiny64("llama-gqa")
    p = prompts_for(model, n=3)
    c = acdc(model, p, tau=tau, metric=metric, max_batch=16)
    patcher = EdgePatcher(model, p)
    assert torch.equal(c.kept, naive_acdc(patcher, p, tau, metric))
    assert 0 < c.n_edges < c.graph.n_edges
    trace = c.meta["trace"]
    assert len(trace) == c.graph.n_edges
    assert all(d < tau for *_, d, gone in trace if gone) and all(d >= tau for *_, d, gone in trace if not gone)
    # the circuit's own metric, measured afresh, is the start value moved by the accepted damages
    value = circuit_metrics(patcher, [c], metric)[0]
    moved = sum(d for *_, d, gone in trace if gone)
    expect = c.meta["start_value"] + (moved if metric == "kl" else -moved)
    assert value == pytest.approx(expect, rel=1e-9, abs=1e-12)


def test_acdc_restricted_candidates():
    model = tiny64("gpt2")
    p = prompts_for(model)
    cands = eap(model, p).top(30)
    c = acdc(model, p, tau=1e-3, candidates=cands, layers=(1, 3))
    g = c.graph
    tried = {(a, b) for a, b, *_ in c.meta["trace"]}
    assert tried <= {(a, b) for a, b, _ in cands.edges()}
    assert all(g.receiver_layer[g.receiver_index(b)] >= 1 for _, b in tried)
    untouched = g.valid & ~cands.kept
    assert c.kept[untouched].all()  # edges outside the candidates are never removed


# ---- circuit result ------------------------------------------------------------------------
def test_circuit_pruning_and_json_round_trip(tmp_path):
    model = tiny("llama-gqa")
    p = prompts_for(model)
    c = eap(model, p)
    top = c.top(20)
    assert top.n_edges == 20
    s = top.scores[top.kept].abs()
    assert s.min() >= c.scores[c.kept & ~top.kept].abs().max()
    th = c.threshold(float(s.min()))
    assert torch.equal(th.kept, top.kept)
    edges = top.edges()
    assert [abs(e[2]) for e in edges] == sorted((abs(e[2]) for e in edges), reverse=True)
    top.save(tmp_path / "c.json")
    back = Circuit.load(tmp_path / "c.json")
    assert torch.equal(back.kept, top.kept) and torch.equal(back.scores, top.scores)
    assert back.graph == top.graph and back.method == "eap" and back.edges() == edges
    assert back.top(5).edges() == c.top(5).edges()
    frame = top.to_frame()
    assert list(frame["sender"]) == [e[0] for e in edges] and len(frame) == 20
    assert "top edges" in top.summary() and top.nodes()
    top.plot()
    assert "<html" in top.to_html().lower()
    with pytest.raises(UncoverError, match="not a saved circuit"):
        Circuit.from_dict({"kind": "PatchResult"})


def test_prompts_checks_lengths():
    model = tiny("llama")
    with pytest.raises(UncoverError, match="equal token counts"):
        Prompts.build(model, tokens(1, 5), tokens(1, 6), [1], [2])
    with pytest.raises(UncoverError, match="valid: logit_diff"):
        metric_values("nope", torch.zeros(1, 4), prompts_for(model, n=1))
