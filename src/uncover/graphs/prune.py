"""Influence and pruning of attribution graphs (Ameisen et al. 2025, section 3.4; circuit-tracer's rules).

The graph's adjacency ``A [n_nodes, n_nodes]`` holds ``A[target, source]`` = the direct effect
of the source on the target. With ``|A|`` row-normalised (each target's incoming edges sum to
1), the influence of a node on the logits is ``w @ (N + N^2 + N^3 + ...)`` where ``w`` weighs
the logit nodes by their probability: the share of the logits' inputs that flows through it,
over paths of every length. Pruning keeps the features that carry ``node_threshold`` of the
total influence, then the edges that carry ``edge_threshold`` of the edge influence, and drops
features left without an incoming or an outgoing edge. Tokens and logits are always kept.
"""

from __future__ import annotations

import torch


def normalize(adjacency: torch.Tensor) -> torch.Tensor:
    """``|A|`` with each row scaled to sum to 1 (rows of zeros stay zero).

    >>> normalize(torch.tensor([[0.0, 0.0], [3.0, -1.0]])).tolist()
    [[0.0, 0.0], [0.75, 0.25]]
    """
    a = adjacency.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def influence(normalized: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``weights @ (N + N^2 + ...)`` ``[n_nodes]`` for a normalised adjacency ``N`` of a graph without cycles.

    >>> n = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])  # 2 <- 1 <- 0 and 2 <- 0
    >>> influence(n, torch.tensor([0.0, 0.0, 1.0])).tolist()
    [1.0, 0.5, 0.0]
    """
    cur = weights @ normalized
    total = cur.clone()
    for _ in range(len(weights)):
        if not bool(cur.any()):
            break
        cur = cur @ normalized
        total += cur
    return total


def threshold_of(scores: torch.Tensor, share: float) -> float:
    """The smallest score among the highest scores that together make up ``share`` of the total.

    >>> threshold_of(torch.tensor([5.0, 3.0, 1.0, 1.0]), 0.8)
    3.0
    """
    s = scores.flatten().sort(descending=True).values
    total = s.sum()
    if total <= 0:
        return float("inf")
    cum = s.cumsum(0) / total
    i = min(int(torch.searchsorted(cum, torch.tensor(share, dtype=cum.dtype))), len(s) - 1)
    return float(s[i])


def prune(adjacency: torch.Tensor, logit_weights: torch.Tensor, n_features: int, n_always: int,
          node_threshold: float = 0.8, edge_threshold: float = 0.98) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(node_mask [n], edge_mask [n, n], node_influence [n])`` of a graph whose first ``n_features`` nodes are
    features and whose last ``n_always`` nodes (tokens, logits) are always kept.

    ``logit_weights`` ``[n]``: the logit nodes' probabilities, zero elsewhere.

    >>> a = torch.zeros(4, 4); a[0, 2] = 1.0; a[1, 0] = 2.0; a[3, 1] = 1.0; a[3, 2] = 0.01  # features 0, 1; token 2
    >>> # logit 3; the weak token -> logit edge goes
    >>> nodes, edges, _ = prune(a, torch.tensor([0, 0, 0, 1.0]), n_features=2, n_always=2)
    >>> nodes.tolist(), int(edges.sum())
    ([True, True, True, True], 3)
    """
    n = len(adjacency)
    node_inf = influence(normalize(adjacency), logit_weights)
    node_mask = node_inf >= threshold_of(node_inf, node_threshold)
    node_mask[n - n_always:] = True
    pruned = adjacency.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    norm = normalize(pruned)
    edge_scores = norm * (influence(norm, logit_weights) + logit_weights)[:, None]
    edge_mask = (edge_scores >= threshold_of(edge_scores, edge_threshold)) & (edge_scores > 0)
    body = slice(0, n - n_always)
    while True:
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[body] &= edge_mask[:, body].any(0)  # features and errors need an outgoing edge
        node_mask[:n_features] &= edge_mask[:n_features].any(1)  # features need an incoming edge
        if torch.equal(old, node_mask):
            break
    return node_mask, edge_mask, node_inf
