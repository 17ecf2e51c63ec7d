"""Edge attribution patching: EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024).

EAP scores every edge ``u → v`` of the circuit graph at once with a first-order
estimate of what corrupting that edge alone does to the metric::

    score(u → v) = (a_u(corrupt) − a_u(clean)) · ∂metric/∂(input of v)

summed over prompts' positions (the metric is the mean over prompts). Sender outputs
``a_u`` come from one clean and one corrupt forward pass, receiver gradients from one
backward pass of the clean run (see :mod:`uncover.circuits.activations` for how each head
gets the gradient of its own copy of the residual, with grouped-query attention and
without copying the model). All scores are one matrix product ``[senders, X] @ [X, receivers]``.

EAP-IG replaces the clean-run gradient by its average over ``steps`` runs whose input
embeddings are interpolated from corrupt to clean (``α = k / steps``, ``k = 1 .. steps``, so
``steps=1`` is EAP); the interpolated runs go in batches of ``batch_steps``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from uncover.circuits.activations import capture, point_list, receiver_grads, unflatten
from uncover.circuits.circuit import Circuit
from uncover.circuits.graph import Graph
from uncover.circuits.prompts import Prompts, metric_values
from uncover.core.errors import UncoverError

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

METHODS = ("eap", "eap-ig")
EAP_METRICS = ("logit_diff", "prob", "logprob")


def _grads(model: HookedModel, graph: Graph, prompts: Prompts, metric: str, k: int,
           embed: torch.Tensor | None = None, alphas: torch.Tensor | None = None) -> torch.Tensor:
    """Receiver gradients ``[R, batch, pos, d_model]`` summed over ``k`` stacked copies of the clean prompts."""
    from uncover.hooks.tokens import Batch

    b = prompts.clean
    batch = Batch(b.input_ids.repeat(k, 1), b.attention_mask.repeat(k, 1)) if k > 1 else b
    fn = None
    if embed is not None and alphas is not None:
        e0 = embed.repeat(k, 1, 1)
        a = alphas.repeat_interleave(prompts.n).view(-1, 1, 1).to(e0.dtype)

        def fn(e1: torch.Tensor) -> torch.Tensor:
            return e0 + a * (e1 - e0)

    cap = capture(model, graph, batch, senders=False, track=True, embed=fn)
    with torch.enable_grad():  # also under a caller's no_grad
        m = metric_values(metric, prompts.last_logits(cap.logits), prompts).sum() / prompts.n
        flat = torch.autograd.grad(m, point_list(cap.points))
    g = receiver_grads(model, graph, cap, unflatten(cap.points, [f.detach() for f in flat]))
    return g.view(g.shape[0], k, prompts.n, *g.shape[2:]).sum(1)


def eap(
    model: HookedModel,
    prompts: Prompts,
    *,
    method: str = "eap",
    metric: str = "logit_diff",
    steps: int = 5,
    batch_steps: int | None = None,
    meta: dict | None = None,
) -> Circuit:
    """Score every edge of ``model``'s graph; returns a :class:`Circuit` keeping all edges (prune it).

    ``method``: ``eap`` or ``eap-ig``; ``metric``: ``logit_diff``, ``prob`` or ``logprob`` (mean over
    prompts); ``steps``/``batch_steps``: EAP-IG's interpolation steps and how many run per batch.

    >>> from uncover.data.tasks import ioi
    >>> prompts = Prompts.from_task(model, ioi(4))
    >>> circuit = eap(model, prompts).top(200)
    >>> circuit.n_edges
    200
    """
    if method not in METHODS:
        raise UncoverError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if metric not in EAP_METRICS:
        raise UncoverError(f"EAP needs a metric with a gradient at the clean run; valid: {', '.join(EAP_METRICS)}")
    if steps < 1:
        raise UncoverError(f"steps must be at least 1 (got {steps})")
    graph = Graph.from_model(model)
    with torch.no_grad():
        clean = capture(model, graph, prompts.clean)
        corrupt = capture(model, graph, prompts.corrupt)
    diff = corrupt.senders - clean.senders  # [U, batch, pos, d_model]
    if method == "eap":
        grads = _grads(model, graph, prompts, metric, 1)
    else:
        alphas = torch.arange(1, steps + 1, dtype=torch.float64) / steps
        per = batch_steps or steps
        grads = torch.zeros(graph.n_receivers, *diff.shape[1:], dtype=diff.dtype, device=diff.device)
        for i in range(0, steps, per):
            a = alphas[i : i + per]
            grads += _grads(model, graph, prompts, metric, len(a), corrupt.senders[0], a.to(model.device))
        grads /= steps
    scores = diff.flatten(1) @ grads.flatten(1).T  # [U, R]
    valid = graph.valid.to(scores.device)
    scores = torch.where(valid, scores, torch.zeros_like(scores))
    info = {"model": model.name, "prompts": prompts.n, **({"steps": steps} if method == "eap-ig" else {}),
            **(meta or {})}
    return Circuit(graph, scores.float().cpu(), graph.valid.clone(), method, metric, info)
