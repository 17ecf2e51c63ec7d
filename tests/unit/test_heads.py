"""Head analysis on tiny models: detectors vs naive loops, circuits vs dense matrices and the forward pass."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import KINDS, V, tiny
from uncover.core.errors import UncoverError
from uncover.data.tasks import repeated_tokens
from uncover.heads.circuits import embed, head_weights, ov_circuit, qk_circuit, token_pairs, unembed
from uncover.heads.composition import composition_scores, random_baseline
from uncover.heads.detectors import KINDS as DETECTORS
from uncover.heads.detectors import HeadScores, copying_scores, detect, head_scores
from uncover.heads.factored import LowRank
from uncover.heads.induction import induction_loss
from uncover.heads.patterns import attention_patterns, parse_head
from uncover.hooks.tokens import Batch

pytestmark = pytest.mark.usefixtures("one_thread_no_grad")


def naive_score(patterns: list[torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Loop over prompts, queries and keys with the definitions written out."""
    L, H = len(patterns), patterns[0].shape[1]
    total, count = torch.zeros(L, H, dtype=torch.float64), 0
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        for q in range(n):
            if kind == "previous":
                keys = [q - 1] if q >= 1 else []
            elif kind == "duplicate":
                keys = [k for k in range(q) if ids[b, k] == ids[b, q]]
            else:
                keys = [k for k in range(1, q + 1) if k - 1 < q and ids[b, k - 1] == ids[b, q]]
            if not keys:
                continue
            count += 1
            for layer in range(L):
                for h in range(H):
                    total[layer, h] += sum(float(patterns[layer][b, h, q, k]) for k in keys)
    return total / count


@pytest.mark.parametrize("kind", ["llama", "llama-gqa", "gpt2", "gemma2"])
def test_detectors_equal_naive_loop_over_cached_patterns(kind):
    m = tiny(kind)
    ids = repeated_tokens(m, n=3, seq_len=6, seed=kind.__len__())
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0  # a right-padded row: padding must neither query nor be a target
    batch = Batch(ids, mask)
    scores = detect(m, batch)
    _, cache = m.run_with_cache(batch, lambda n: n.endswith("hook_pattern"))
    pats = [cache[f"blocks.{li}.attn.hook_pattern"] for li in range(m.cfg.n_layers)]
    for k in DETECTORS:
        torch.testing.assert_close(scores[k].scores, naive_score(pats, ids, mask, k).float(), atol=1e-5, rtol=0)
    assert scores["induction"].n_queries > 0


def _distinct_repeats(n: int, seq_len: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    body = torch.stack([torch.randperm(V - 3, generator=g)[:seq_len] + 3 for _ in range(n)])
    return torch.cat([torch.ones(n, 1, dtype=torch.long), body, body], dim=1)  # token 1 as BOS


@pytest.mark.parametrize("target", ["previous", "duplicate", "induction"])
def test_hand_built_head_gets_score_one(target):
    """Layer 1 head 2 is forced to attend exactly where the definition points; it scores 1, others less."""
    m = tiny("llama-gqa")
    N = 7
    ids = _distinct_repeats(3, N)

    def force(pattern, hook):
        p = pattern.clone()
        T = p.shape[-1]
        p[:, 2] = 0
        for q in range(T):
            if target == "previous":
                k = max(q - 1, 0)
            elif q > N:  # second repeat: duplicate at q - N, induction at q - N + 1
                k = q - N if target == "duplicate" else q - N + 1
            else:
                k = 0
            p[:, 2, q, k] = 1.0
        return p

    with m.hooks([("blocks.1.attn.hook_pattern", force)]):
        s = head_scores(m, target, ids)
    assert s.scores[1, 2] == pytest.approx(1.0, abs=1e-6)
    assert s.top(1)[0][:2] == (1, 2)
    others = torch.cat([s.scores[0], s.scores[2], s.scores[1, :2], s.scores[1, 3:]])
    assert float(others.max()) < 0.9


def test_errors_name_the_choices():
    m = tiny("llama")
    with pytest.raises(UncoverError, match="valid: previous, duplicate, induction"):
        head_scores(m, "inductive")
    with pytest.raises(UncoverError, match="no query position"):
        detect(m, torch.arange(3, 9)[None], ["duplicate"])  # nothing repeats
    with pytest.raises(UncoverError, match="valid: q, k, v"):
        composition_scores(m, "o")
    with pytest.raises(UncoverError, match="LAYER.HEAD"):
        parse_head("5:2")
    with pytest.raises(UncoverError, match="valid heads: 0 .. 3"):
        parse_head("1.7", 3, 4)
    with pytest.raises(UncoverError, match="valid: vocab, resid"):
        ov_circuit(m, 0, 0, basis="token")


# ---- circuits against the forward pass (the fold convention) -----------------------------

@pytest.mark.parametrize("kind", ["llama", "llama-gqa", "mistral", "gemma", "gpt_neox", "gpt2"])
def test_folded_weights_reproduce_the_forward_pass_at_position_zero(kind):
    """At position 0 a head attends only to itself and rotary is the identity, so
    ``hook_q = x/scale @ W_Q' + b_Q`` and ``hook_result = x/scale @ W_V' W_O' + b_V W_O`` exactly."""
    from uncover.hooks.cache import norm_scale

    m = tiny(kind, dtype=torch.float64)
    ids = repeated_tokens(m, n=2, seq_len=3)
    layer, L = 1, m.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k",
             f"blocks.{layer}.attn.hook_result", "hook_embed", f"blocks.{L - 1}.hook_resid_post"]
    logits, cache = m.run_with_cache(ids, names)
    c = m.cfg
    x = cache[f"blocks.{layer}.hook_resid_pre"][:, 0]  # [batch, d_model]
    ln1 = m.norm(layer)
    xh = x / norm_scale(x, c.norm_kind, m.adapter.norm_params(ln1)[2])
    bias = m.adapter.norm_params(ln1)[1]
    hw = head_weights(m, layer, torch.float64)
    bq, bk, bv = m.adapter.b_QKV(layer)
    kv = torch.arange(c.n_heads) // c.n_groups
    for h in range(c.n_heads):
        extra_q = (0 if bq is None else bq[h]) + (0 if bias is None else bias @ m.W_Q(layer)[h])
        extra_k = (0 if bk is None else bk[kv[h]]) + (0 if bias is None else bias @ m.W_K(layer)[kv[h]])
        v_bias = (torch.zeros(c.d_head, dtype=xh.dtype) if bv is None else bv[kv[h]]) + (
            0 if bias is None else bias @ m.W_V(layer)[kv[h]])
        torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_q"][:, 0, h], xh @ hw.W_Q[h] + extra_q)
        torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_k"][:, 0, kv[h]], xh @ hw.W_K[h] + extra_k)
        ov = ov_circuit(m, layer, h, basis="resid", dtype=torch.float64)
        want = xh @ ov.A @ ov.B + v_bias @ m.W_O(layer)[h]
        torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_result"][:, 0, h], want)
        qk = qk_circuit(m, layer, h, basis="resid", dtype=torch.float64)
        torch.testing.assert_close(qk.full(), hw.W_Q[h] @ hw.W_K[h].T)
    # embedding (with its scale) and unembedding (with the final norm folded in)
    torch.testing.assert_close(cache["hook_embed"][0], embed(m, torch.float64)[ids[0]])
    w, b, eps = m.adapter.norm_params(m.norm(None))
    xf = cache[f"blocks.{c.n_layers - 1}.hook_resid_post"]
    bias_u = (0 if b is None else b @ m.W_U) + (0 if m.adapter.b_U is None else m.adapter.b_U)
    torch.testing.assert_close(logits, xf / norm_scale(xf, c.norm_kind, eps) @ unembed(m, torch.float64) + bias_u)


# ---- eigenvalues, copying and composition against dense matrices --------------------------

@pytest.mark.parametrize("kind", ["llama", "llama-gqa", "gpt2", "qwen3", "gemma2"])
def test_copying_scores_equal_dense_full_ov_eigenvalues(kind):
    m = tiny(kind, dtype=torch.float64)
    grid = copying_scores(m, dtype=torch.float64).scores
    E, U = embed(m, torch.float64), unembed(m, torch.float64)
    for layer in range(m.cfg.n_layers):
        hw = head_weights(m, layer, torch.float64)
        for h in range(m.cfg.n_heads):
            full = E @ hw.W_V[h] @ hw.W_O[h] @ U  # [d_vocab, d_vocab], materialised
            ev = torch.linalg.eigvals(full)
            want = float(ev.sum().real / ev.abs().sum())
            assert float(grid[layer, h]) == pytest.approx(want, abs=1e-5)
            ov = ov_circuit(m, layer, h, dtype=torch.float64)
            assert ov.shape == (V, V) and ov.rank == m.cfg.d_head
            top = ev[ev.abs().argsort(descending=True)[: ov.rank]]
            got = ov.eigenvalues()
            torch.testing.assert_close(torch.sort(got.abs()).values, torch.sort(top.abs()).values)
            torch.testing.assert_close(got.sum(), ev.sum())
            torch.testing.assert_close(ov.singular_values(), torch.linalg.svdvals(full)[: ov.rank])
            torch.testing.assert_close(ov.diag(), full.diagonal())
    assert grid.abs().max() <= 1.0


def test_low_rank_full_top_pairs_and_products():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(300, 4, generator=g, dtype=torch.float64), torch.randn(4, 200, generator=g, dtype=torch.float64)
    M, dense = LowRank(A, B), A @ B
    rows, cols = [5, 7, 250], [0, 199]
    torch.testing.assert_close(M.full(rows, cols), dense[rows][:, cols])
    for largest in (True, False):
        pairs = M.top_pairs(7, largest=largest, chunk=64)
        vals, idx = dense.flatten().topk(7, largest=largest)
        assert [(r, c) for r, c, _ in pairs] == [(int(i) // 200, int(i) % 200) for i in idx]
        torch.testing.assert_close(torch.tensor([v for _, _, v in pairs], dtype=torch.float64), vals)
    sub = M.top_pairs(3, rows=rows, cols=cols)
    want = dense[rows][:, cols].flatten().topk(3)
    assert [v for *_, v in sub] == pytest.approx(want.values.tolist())
    C = LowRank(torch.randn(200, 3, generator=g, dtype=torch.float64), torch.randn(3, 50, generator=g,
                                                                                 dtype=torch.float64))
    torch.testing.assert_close((M @ C).full(), dense @ C.A @ C.B)
    torch.testing.assert_close(M.T.full(), dense.T)
    assert M.norm() == pytest.approx(float(dense.norm()))


@pytest.mark.parametrize("kind", ["llama-gqa", "gpt2", "qwen3"])
@pytest.mark.parametrize("comp", ["q", "k", "v"])
def test_composition_equals_direct_formula_on_dense_matrices(kind, comp):
    m = tiny(kind, dtype=torch.float64)
    r = composition_scores(m, comp, dtype=torch.float64, baseline_samples=8)
    L, H = m.cfg.n_layers, m.cfg.n_heads
    hws = [head_weights(m, li, torch.float64) for li in range(L)]
    OV = [[hw.W_V[h] @ hw.W_O[h] for h in range(H)] for hw in hws]  # dense [d_model, d_model]
    QK = [[hw.W_Q[h] @ hw.W_K[h].T for h in range(H)] for hw in hws]
    for a in range(L):
        for b in range(H):
            for c in range(L):
                for d in range(H):
                    got = float(r.scores[a, b, c, d])
                    if a >= c:
                        assert got != got  # NaN
                        continue
                    WB = {"q": QK[c][d], "k": QK[c][d].T, "v": OV[c][d]}[comp]
                    WA = OV[a][b]
                    want = float((WA @ WB).norm() / (WA.norm() * WB.norm()))
                    assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    part = composition_scores(m, comp, dtype=torch.float64, baseline_samples=8, readers=[L - 1])
    torch.testing.assert_close(part.scores[:, :, L - 1], r.scores[:, :, L - 1], equal_nan=True)
    assert part.scores[:, :, : L - 1].isnan().all()
    frame = r.to_frame()
    assert len(frame) == L * (L - 1) // 2 * H * H and frame["score"].is_monotonic_decreasing
    assert r.top(1)[0][4] == pytest.approx(float(frame["score"].iloc[0]))


def test_random_baseline_matches_random_matrices_and_shrinks_with_width():
    b_small, b_big = random_baseline(32, 4, n=32), random_baseline(256, 4, n=32)
    assert 0 < b_big < b_small < 1
    # Gaussian rank-r factors in d dims: E‖AB‖² / (E‖A‖² E‖B‖²) ≈ 1/d, so the score ≈ 1/√d
    assert b_big == pytest.approx(256**-0.5, rel=0.25)


# ---- every family ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_every_family_runs_every_view(kind, tmp_path):
    m = tiny(kind)
    ids = repeated_tokens(m, n=2, seq_len=5)
    det = detect(m, ids)
    for s in det.values():
        assert s.scores.shape == (m.cfg.n_layers, m.cfg.n_heads)
        assert bool(((s.scores >= 0) & (s.scores <= 1 + 1e-5)).all())
    cop = copying_scores(m)
    assert cop.scores.isfinite().all()
    comp = composition_scores(m, "k", baseline_samples=4)
    assert comp.scores[0, 0, 1].isfinite().all() and comp.scores[1, 0, 0].isnan().all()
    pats = attention_patterns(m, ids[0, :6], ["0.1", (m.cfg.n_layers - 1, 0)])
    assert pats.patterns.shape == (2, 6, 6)
    torch.testing.assert_close(pats.patterns.sum(-1), torch.ones(2, 6))
    assert torch.triu(pats.patterns, 1).abs().max() == 0
    loss = induction_loss(m, ids)
    assert loss.loss.shape == (2, 10)
    for result in (det["induction"], cop, comp, pats, loss):
        assert result.title and result.summary()
        assert len(result.to_frame()) > 0
        assert '"kind"' in result.to_json()
        result.plot()
    pats.to_html(tmp_path / "p.html")
    assert "plotly" in (tmp_path / "p.html").read_text()[:20000].lower()


def test_patterns_of_a_layer_and_token_pairs():
    m = tiny("llama-gqa")
    ids = repeated_tokens(m, n=1, seq_len=4)[0]
    r = attention_patterns(m, ids, layer=2)
    assert r.heads == [(2, h) for h in range(m.cfg.n_heads)]
    _, cache = m.run_with_cache(ids[None], "blocks.2.attn.hook_pattern")
    torch.testing.assert_close(r.patterns, cache["blocks.2.attn.hook_pattern"][0])
    fig = r.plot()
    assert len(fig.data) == m.cfg.n_heads and len(fig.layout.updatemenus[0].buttons) == m.cfg.n_heads
    df = token_pairs(m, ov_circuit(m, 1, 0), 5)
    assert list(df.columns) == ["row", "row_token", "col", "col_token", "value"] and len(df) == 5
    assert df["value"].is_monotonic_decreasing


def test_induction_loss_positions_and_input_checks():
    m = tiny("llama")
    ids = repeated_tokens(m, n=2, seq_len=5)
    r = induction_loss(m, ids)
    logits = m(ids).log_softmax(-1)
    # column t - 1 is the loss of token t given tokens < t
    assert float(r.loss[1, 6]) == pytest.approx(-float(logits[1, 6, ids[1, 7]]), abs=1e-5)
    assert r.first == pytest.approx(float(r.loss[:, 1:5].mean()))
    assert r.second == pytest.approx(float(r.loss[:, 6:].mean()))
    assert list(r.to_frame()["repeat"]).count("second") == 4
    with pytest.raises(UncoverError, match="halves"):
        induction_loss(m, torch.arange(3, 14)[None])


def test_head_scores_result_views():
    s = HeadScores("previous", torch.tensor([[0.0, 0.5], [1.0, 0.25]]), 12, "m")
    assert s.top(2) == [(1, 0, 1.0), (0, 1, 0.5)]
    assert list(s.to_frame()["head_name"])[:2] == ["L1H0", "L0H1"]
    assert "L1H0 1.000" in s.summary()
