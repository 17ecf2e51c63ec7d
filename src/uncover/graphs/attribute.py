"""Attribution graphs: direct effects between embeddings, transcoder features, error nodes and logits.

In the local replacement model (:mod:`uncover.graphs.replacement`) everything between nodes
is linear, so the edge from a source node ``s`` to a target ``t`` is
``a_s * d(pre_t)/d(a_s)``: the source's activation (for errors and embeddings, the dot product
of the vector with its gradient) times the gradient of the target's pre-activation through the
frozen system (Ameisen et al. 2025, section 2.3). Targets are the logits (``logit - mean logit``
at the last position, as circuit-tracer does) and feature pre-activations (the encoder's
reading of the MLP input at the feature's position).

Each target is one backward pass; passes are batched by ``torch.autograd.grad(...,
is_grads_batched=True)`` (a vectorised backward over one-hot output gradients). Features are
visited in order of their estimated influence on the logits (recomputed after each batch from
the rows known so far), up to ``max_feature_nodes``, as circuit-tracer does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from uncover.core.errors import UsageError
from uncover.core.progress import Progress
from uncover.graphs.prune import influence, normalize, prune
from uncover.graphs.replacement import ReplacementPass, replacement_pass

if TYPE_CHECKING:
    from uncover.graphs.graph import AttributionGraph
    from uncover.hooks.hooked import HookedModel
    from uncover.transcoders import TranscoderSet


def batched_grads(outs: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Gradients of each of ``outs`` ``[K]`` with respect to each leaf: ``[K, *leaf.shape]`` (``None``: unused)."""
    eye = torch.eye(len(outs), dtype=outs.dtype, device=outs.device)
    try:
        return list(torch.autograd.grad(outs, leaves, grad_outputs=eye, is_grads_batched=True, retain_graph=True,
                                        allow_unused=True))
    except RuntimeError:  # an operation without a batching rule: one backward pass per output
        rows = [torch.autograd.grad(o, leaves, retain_graph=True, allow_unused=True) for o in outs]
        return [None if rows[0][i] is None else torch.stack([r[i] for r in rows]) for i in range(len(leaves))]


def edge_rows(rp: ReplacementPass, outs: torch.Tensor) -> torch.Tensor:
    """Edges ``[K, n_sources]`` into each target scalar of ``outs`` ``[K]`` from every source of the pass.

    Sources, in order: the active features (by layer, as in ``rp.features``), the error nodes
    (``layer * pos + position``, every layer), the embeddings (one per position).
    """
    leaves = rp.leaves()
    grads = batched_grads(outs, leaves)
    k, dt = len(outs), outs.dtype
    parts = []
    i = 0
    for la in sorted(rp.features):
        a = rp.features[la].act
        g = grads[i]
        parts.append(torch.zeros(k, len(a), dtype=dt) if g is None else (a.detach() * g).to(dt))
        i += 1
    for la in sorted(rp.errors):
        e = rp.errors[la]
        g = grads[i]
        parts.append(torch.zeros(k, e.shape[0], dtype=dt) if g is None else (e.detach() * g).sum(-1).to(dt))
        i += 1
    tok = torch.zeros(k, rp.logits.shape[0], dtype=dt)
    for e, g in zip(rp.embeds, grads[i:]):
        if g is not None:
            tok += (e.detach()[0] * g[:, 0]).sum(-1).to(dt)
    parts.append(tok)
    return torch.cat(parts, 1)


def feature_table(rp: ReplacementPass) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(layer, pos, index, activation)`` ``[n_active]`` of every active feature, in source order."""
    layers = sorted(rp.features)
    cat = [torch.cat(t) if t else torch.zeros(0, dtype=torch.long) for t in (
        [torch.full_like(rp.features[la].pos, la) for la in layers], [rp.features[la].pos for la in layers],
        [rp.features[la].index for la in layers])]
    acts = torch.cat([rp.features[la].act.detach() for la in layers]) if layers else torch.zeros(0)
    return cat[0], cat[1], cat[2], acts


def feature_preacts(rp: ReplacementPass, tset: TranscoderSet, layer: torch.Tensor, pos: torch.Tensor,
                    index: torch.Tensor) -> torch.Tensor:
    """Encoder pre-activations ``[m]`` (without ``b_enc``) of features ``(layer, pos, index)``, with gradients."""
    outs = []
    for la in layer.unique().tolist():
        sel = (layer == la).nonzero().flatten()
        x = rp.mlp_inputs[la][pos[sel]]  # [m, d_in]
        w = tset.W_enc(la)[:, index[sel]].T  # [m, d_in]
        dt = torch.promote_types(x.dtype, torch.float32)
        outs.append((sel, (x.to(dt) * w.to(dt)).sum(-1)))
    if not outs:
        return torch.zeros(0)
    vals = torch.cat([v for _, v in outs])
    order = torch.cat([s for s, _ in outs])
    return vals[order.argsort()]


def logit_targets(model: HookedModel, rp: ReplacementPass, targets: Sequence[str] | None,
                  n_logits: int) -> tuple[list[int], torch.Tensor]:
    """Target token ids and their probabilities at the last position (default: the ``n_logits`` most likely)."""
    probs = torch.softmax(rp.logits[-1].float(), -1)
    if targets:
        ids = [model.to_single_token(t) for t in targets]
    else:
        ids = probs.topk(n_logits).indices.tolist()
    return ids, probs[ids]


def attribution_graph(model: HookedModel, tset: TranscoderSet, prompt: str | torch.Tensor,
              targets: Sequence[str] | None = None, *, n_logits: int = 1, max_feature_nodes: int = 256,
              batch_size: int = 32, node_threshold: float = 0.8, edge_threshold: float = 0.98,
              progress: Progress | bool = False) -> AttributionGraph:
    """The attribution graph of ``prompt`` for target tokens at its last position, pruned by influence.

    ``prompt``: text, or token ids ``[pos]``. ``targets``: tokens (each exactly one token); default: the
    ``n_logits`` most likely next tokens.
    ``max_feature_nodes``: at most this many features get their incoming edges computed (visited in
    order of influence); ``batch_size``: targets per vectorised backward pass. ``node_threshold`` and
    ``edge_threshold``: shares of the influence the pruned graph keeps (circuit-tracer's 0.8 and 0.98).

    >>> from uncover.transcoders import QuickTranscoderSpec, quick_transcoders
    >>> ts = quick_transcoders(model, QuickTranscoderSpec(layers=(3,), steps=10), progress=False)
    >>> g = attribution_graph(model, ts, "The capital of France is", [" Paris"], max_feature_nodes=8)
    >>> g.targets, g.n_features
    ([' Paris'], 8)
    """
    from uncover.graphs.graph import AttributionGraph

    prog = progress if isinstance(progress, Progress) else Progress(enabled=bool(progress))
    t0 = time.perf_counter()
    ids = prompt.reshape(-1) if isinstance(prompt, torch.Tensor) else model.to_tokens(prompt)[0]
    if len(ids) < 1:
        raise UsageError("the prompt has no tokens")
    strs = [str(t) for t in model.to_str_tokens(ids)]
    rp = replacement_pass(model, tset, ids)
    target_ids, probs = logit_targets(model, rp, targets, n_logits)
    z = rp.pre_logits[-1]
    logit_outs = z[target_ids] - z.mean()
    logit_rows = edge_rows(rp, logit_outs).float()  # [T, n_src]
    f_layer, f_pos, f_index, f_act = feature_table(rp)
    n_f, n_pos, n_layers, n_t = len(f_act), len(ids), model.cfg.n_layers, len(target_ids)
    n_src = logit_rows.shape[1]
    # selection: features visited in order of influence through the rows known so far
    big = torch.zeros(n_src + n_t, n_src + n_t)
    big[n_src:, :n_src] = logit_rows
    w = torch.zeros(n_src + n_t)
    w[n_src:] = probs
    visited: list[int] = []
    rows: dict[int, torch.Tensor] = {}
    budget = min(max_feature_nodes, n_f)
    n_backward = n_t
    rounds = -(-budget // batch_size)
    for _ in prog.bar(range(rounds), desc="attributing features"):
        inf = influence(normalize(big), w)[:n_f]
        if visited:
            inf[torch.tensor(visited)] = -1.0
        pick = inf.topk(min(batch_size, budget - len(visited))).indices
        pre = feature_preacts(rp, tset, f_layer[pick], f_pos[pick], f_index[pick])
        r = edge_rows(rp, pre).float()
        n_backward += len(pick)
        for j, f in enumerate(pick.tolist()):
            rows[f] = r[j]
            big[f, :n_src] = r[j]
            visited.append(f)
    sel = torch.tensor(sorted(visited), dtype=torch.long)
    # the graph: selected features, errors, tokens, logits
    cols = torch.cat([sel, torch.arange(n_f, n_src)])
    n_sel = len(sel)
    n = n_sel + n_layers * n_pos + n_pos + n_t
    adj = torch.zeros(n, n)
    for i, f in enumerate(sel.tolist()):
        adj[i, : n - n_t] = rows[f][cols]
    adj[n - n_t:, : n - n_t] = logit_rows[:, cols]
    lw = torch.zeros(n)
    lw[n - n_t:] = probs
    node_mask, edge_mask, node_inf = prune(adj, lw, n_sel, n_pos + n_t, node_threshold, edge_threshold)
    err_norm = torch.stack([rp.errors[la].detach().norm(dim=-1) for la in range(n_layers)]).float()  # [L, pos]
    return AttributionGraph(
        prompt=prompt if isinstance(prompt, str) else "".join(strs), tokens=strs, token_ids=ids.tolist(),
        targets=[str(model.to_str_tokens(torch.tensor([t]))[0]) for t in target_ids], target_ids=target_ids,
        target_probs=probs.tolist(), target_logits=logit_outs.detach().tolist(),
        feature_layer=f_layer[sel], feature_pos=f_pos[sel], feature_index=f_index[sel], feature_act=f_act[sel],
        error_norm=err_norm, adjacency=adj, node_mask=node_mask, edge_mask=edge_mask, influence=node_inf,
        node_threshold=node_threshold, edge_threshold=edge_threshold, n_layers=n_layers, n_active=n_f,
        transcoders=f"{tset.kind} transcoders on layers {tset.layers}", model_name=model.name or "",
        seconds=time.perf_counter() - t0, backward_passes=n_backward)
