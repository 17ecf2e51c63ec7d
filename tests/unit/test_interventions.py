"""Interventions against references computed another way (plain HF model + manual torch hooks).

Each test applies an intervention value through ``model.intervene`` and compares with the
same change made by hand on the Hugging Face module tree, or with an identity that must
hold (zeroing a head's pattern zeroes its ``z``; a uniform pattern makes ``z`` the running
mean of ``v``; patching the whole input reproduces the other prompt).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
import torch

from tests.conftest import KINDS, tokens
from tests.conftest import tiny as _tiny
from uncover import Ablate, Add, HookedModel, Intervention, Mean, Project, Replace, Zero
from uncover.core.errors import UncoverError

pytestmark = pytest.mark.usefixtures("one_thread_no_grad")


def tiny(kind: str) -> HookedModel:
    """A tiny model whose biases are not zero (HF initialises them to zero, which would hide
    any mistake in how uncover handles them)."""
    m = _tiny(kind)
    g = torch.Generator().manual_seed(5)
    for name, p in m.model.named_parameters():
        if name.endswith("bias"):
            p.data.add_(0.1 * torch.randn(p.shape, generator=g))
    return m


@contextlib.contextmanager
def manual(module: torch.nn.Module, fn, pre: bool = False):
    """A plain torch hook: ``fn(x) -> x`` on a module's first input (``pre``) or output."""
    if pre:
        h = module.register_forward_pre_hook(lambda mod, args: (fn(args[0]), *args[1:]))
    else:

        def out_hook(mod, args, out):
            if isinstance(out, tuple):
                return (fn(out[0]), *out[1:])
            return fn(out)

        h = module.register_forward_hook(out_hook)
    try:
        yield
    finally:
        h.remove()


def plain(m: HookedModel, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the plain HF model (no uncover hooks)."""
    return m.model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def o_proj(m: HookedModel, layer: int) -> torch.nn.Module:
    return m.adapter.attn_part(layer, m.adapter.family.o)


def head_cols(m: HookedModel, h: int) -> slice:
    d = m.cfg.d_head
    return slice(h * d, (h + 1) * d)


def qkv_proj(m: HookedModel, layer: int, which: int, head: int) -> tuple[torch.nn.Module, slice]:
    """The projection module writing q/k/v (``which`` = 0/1/2) and the output columns of ``head``
    (written from the HF sources, independently of uncover's sites)."""
    f, c = m.adapter.family, m.cfg
    d = c.d_head
    if f.qkv_layout == "separate":
        return m.adapter.attn_part(layer, (f.q, f.k, f.v)[which]), slice(head * d, (head + 1) * d)
    mod = m.adapter.attn_part(layer, f.qkv_fused)
    if f.qkv_layout == "gpt2":  # [q heads | k heads | v heads]
        base = which * c.n_heads * d
        return mod, slice(base + head * d, base + (head + 1) * d)
    base = head * 3 * d + which * d  # neox: per head [q | k | v]
    return mod, slice(base, base + d)


def zero_cols(cols: slice):
    def fn(x):
        x = x.clone()
        x[..., cols] = 0
        return x

    return fn


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def differs(a: torch.Tensor, b: torch.Tensor, by: float = 1e-5) -> None:
    assert (a - b).abs().max() > by, "intervention had no visible effect"


# ---- per family: heads -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_zero_head_z_equals_zeroed_o_proj_input(kind):
    m = tiny(kind)
    toks = tokens(2, 6)
    with manual(o_proj(m, 1), zero_cols(head_cols(m, 2)), pre=True):
        ref = plain(m, toks)
    with m.intervene([Zero("blocks.1.attn.hook_z", heads=[2])]):
        got = m(toks)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    differs(got, plain(m, toks))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", [0, 1, 2])
def test_zero_qkv_head_equals_zeroed_projection_columns(kind, which):
    """Zeroing query head 3 or key/value head ``n_kv - 1`` (GQA: a shared head) equals zeroing the
    projection's output columns; with q/k norms (Qwen3, Gemma 3) the norm of zero is zero."""
    m = tiny(kind)
    toks = tokens(2, 6)
    head = m.cfg.n_heads - 1 if which == 0 else m.cfg.n_kv_heads - 1
    mod, cols = qkv_proj(m, 0, which, head)
    with manual(mod, zero_cols(cols)):
        ref = plain(m, toks)
    name = "blocks.0.attn." + ("hook_q", "hook_k", "hook_v")[which]
    with m.intervene([Zero(name, heads=[head])]):
        got = m(toks)
    close(got, ref, 1e-6)
    differs(got, plain(m, toks))


@pytest.mark.parametrize("kind", KINDS)
def test_zero_pattern_head_equals_zero_z_head(kind):
    """z = pattern @ v, so a zero pattern row gives a zero z (at the same query positions)."""
    m = tiny(kind)
    toks = tokens(2, 6)
    for pos in (None, [-1], [1, 3]):
        with m.intervene([Zero("blocks.1.attn.hook_z", heads=[1], positions=pos)]):
            ref = m(toks)
        with m.intervene([Zero("blocks.1.attn.hook_pattern", heads=[1], positions=pos)]):
            got = m(toks)
        close(got, ref)
        differs(got, plain(m, toks))


def _causal_uniform(n: int) -> torch.Tensor:
    p = torch.tril(torch.ones(n, n))
    return p / p.sum(-1, keepdim=True)


@pytest.mark.parametrize("kind", KINDS)
def test_uniform_pattern_makes_z_the_running_mean_of_v(kind):
    m = tiny(kind)
    toks = tokens(2, 6)
    _, cache = m.run_with_cache(toks, names=["blocks.0.attn.hook_v"])
    v = cache["blocks.0.attn.hook_v"]  # [b, p, kv, d]
    v = v.repeat_interleave(m.cfg.n_groups, dim=2)  # query head h reads kv head h // n_groups
    z = v.cumsum(1) / torch.arange(1, 7).view(1, 6, 1, 1)
    with manual(o_proj(m, 0), lambda x: z.flatten(-2).to(x.dtype), pre=True):
        ref = plain(m, toks)
    u = _causal_uniform(6)  # [q, k] broadcasts to [batch, head, q, k]
    with m.intervene([Replace("blocks.0.attn.hook_pattern", source=u)]):
        got = m(toks)
    close(got, ref)
    differs(got, plain(m, toks))
    # the same through the scores: 0 where allowed, -inf elsewhere
    scores = torch.zeros(6, 6).masked_fill(u == 0, float("-inf"))
    with m.intervene([Replace("blocks.0.attn.hook_attn_scores", source=scores)]):
        close(m(toks), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_pattern_rewritten_unchanged_reproduces_logits(kind):
    """A hook that returns a copy takes the 'changed' path (output computed from the pattern):
    it must agree with the model's own attention (scaling, softcap, sliding window, GQA, mask)."""
    m = tiny(kind)
    ids = tokens(2, 7)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ref = plain(m, ids, mask)
    real = mask.bool()
    for name, fn in [
        ("blocks.0.attn.hook_pattern", lambda v, hp: v.clone()),
        ("blocks.2.attn.hook_pattern", lambda v, hp: v.clone()),
        ("blocks.1.attn.hook_attn_scores", lambda v, hp: v + 3.0),  # softmax is shift-invariant
    ]:
        with m.hooks([(name, fn)]):
            got = m.model(input_ids=ids, attention_mask=mask).logits
        close(got[real], ref[real])


@pytest.mark.parametrize("kind", KINDS)
def test_head_result_write_equals_o_proj_output_write(kind):
    m = tiny(kind)
    toks = tokens(2, 6)
    w = torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(3))
    with manual(o_proj(m, 1), lambda x: x + w):
        ref = plain(m, toks)
    with m.intervene([Add("blocks.1.attn.hook_result", vector=w, heads=[2])]):
        close(m(toks), ref)
    # two interventions on the same hook compose, and zeroing results = zeroing z
    with m.intervene([Zero("blocks.1.attn.hook_z", heads=[0, 3])]):
        ref = m(toks)
    with m.intervene([Zero("blocks.1.attn.hook_result", heads=[0]), Zero("blocks.1.attn.hook_result", heads=[3])]):
        close(m(toks), ref)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "gpt_neox"])
def test_resid_mid_write_equals_attn_out_write(kind):
    m = tiny(kind)
    toks = tokens(2, 6)
    vec = torch.randn(m.cfg.d_model, generator=torch.Generator().manual_seed(4))
    with m.intervene([Add("blocks.1.hook_attn_out", vector=vec, positions=[-2])]):
        ref = m(toks)
    with m.intervene([Add("blocks.1.hook_resid_mid", vector=vec, positions=[-2])]):
        got = m(toks)
    close(got, ref)
    differs(got, plain(m, toks))
    # the value written is the value the MLP sees: the input of ln2
    seen = {}
    ln2 = m.norm(1, "ln2")
    h = ln2.register_forward_pre_hook(lambda mod, args: seen.__setitem__("ln2", args[0].clone()))
    try:
        target = torch.randn(2, 6, m.cfg.d_model)
        with m.intervene([Replace("blocks.1.hook_resid_mid", source=target)]):
            m(toks)
    finally:
        h.remove()
    close(seen["ln2"], target)


@pytest.mark.parametrize("kind", KINDS)
def test_patching_whole_resid_pre_reproduces_other_prompt(kind):
    m = tiny(kind)
    clean, corrupt = tokens(1, 6, seed=1), tokens(1, 6, seed=2)
    clean_logits, cache = m.run_with_cache(clean, names=["blocks.0.hook_resid_pre"])
    with m.intervene([Replace("blocks.0.hook_resid_pre", source=cache["blocks.0.hook_resid_pre"])]):
        got = m(corrupt)
    torch.testing.assert_close(got, clean_logits, rtol=0, atol=0)
    differs(plain(m, corrupt), clean_logits)


# ---- residual interventions (Llama; cheap) ------------------------------------------------------
def _block_out(m, layer, fn):
    return manual(m.adapter.block(layer), fn)


def test_add_at_last_position_equals_manual_addition():
    m = tiny("llama")
    toks = tokens(2, 6)
    vec = torch.randn(m.cfg.d_model)

    def add_last(x):
        x = x.clone()
        x[:, -1] += 0.5 * vec
        return x

    with manual(m.adapter.block(1), add_last, pre=True):
        ref = plain(m, toks)
    with m.intervene([Add("blocks.1.hook_resid_pre", vector=vec, scale=0.5, positions=-1)]):
        got = m(toks)
    close(got, ref, 1e-6)
    torch.testing.assert_close(got[:, :-1], plain(m, toks)[:, :-1], rtol=0, atol=0)  # causal: earlier untouched


@pytest.mark.parametrize("iv_cls", [Project, Ablate])
def test_project_and_ablate_equal_manual(iv_cls):
    m = tiny("llama")
    toks = tokens(2, 6)
    u = torch.randn(m.cfg.d_model)
    unit = u / u.norm()

    def fn(x):
        x = x.clone()
        along = (x[:, [0, 4]] @ unit).unsqueeze(-1) * unit
        x[:, [0, 4]] = along if iv_cls is Project else x[:, [0, 4]] - along
        return x

    with _block_out(m, 0, fn):
        ref = plain(m, toks)
    with m.intervene([iv_cls("blocks.0.hook_resid_post", direction=u * 3, positions=[0, -2])]):
        got = m(toks)
    close(got, ref)
    differs(got, plain(m, toks))


def test_project_plus_ablate_is_identity_on_the_value():
    m = tiny("llama")
    toks = tokens(2, 5)
    u = torch.randn(m.cfg.d_model)
    seen = {}

    def rec(key):
        return lambda v, hp: seen.__setitem__(key, v.clone())

    name = "blocks.1.hook_mlp_out"
    for key, iv in [("p", Project(name, direction=u)), ("a", Ablate(name, direction=u))]:
        with m.intervene([iv]), m.hooks([(name, rec(key))]):
            m(toks)
    _, cache = m.run_with_cache(toks, names=[name])
    close(seen["p"] + seen["a"], cache[name])
    close(seen["a"] @ u, torch.zeros(2, 5), 1e-5)


def test_mean_ablation_uses_real_tokens_only():
    m = tiny("llama")
    ids = tokens(2, 6)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    name = "blocks.0.hook_resid_post"
    _, cache = m.run_with_cache(m.tokenize(ids), names=[name])  # unpadded run: same real values
    act = cache[name]
    mu = (act * mask[..., None]).sum((0, 1)) / mask.sum()
    with _block_out(m, 0, lambda x: mu.expand_as(x).clone()):
        ref = plain(m, ids, mask)
    from uncover.hooks.tokens import Batch

    with m.intervene([Mean(name)]):
        got = m(Batch(ids, mask))
    real = mask.bool()
    close(got[real], ref[real])


def test_mean_per_head_and_explicit_mean():
    m = tiny("llama")
    toks = tokens(2, 6)
    name = "blocks.1.attn.hook_z"
    _, cache = m.run_with_cache(toks, names=[name])
    z = cache[name]  # [b, p, h, d]
    mu = z.mean((0, 1))  # [h, d]

    def fn(x):
        x = x.clone()
        x[..., head_cols(m, 1)] = mu[1]
        return x

    with manual(o_proj(m, 1), fn, pre=True):
        ref = plain(m, toks)
    with m.intervene([Mean(name, heads=[1])]):
        close(m(toks), ref)
    with m.intervene([Mean(name, heads=1, mean=mu)]):  # a per-head mean is indexed by head
        close(m(toks), ref)
    with m.intervene([Mean(name, heads=[1], mean=mu[1])]):  # a [d_head] mean broadcasts
        close(m(toks), ref)


def test_replace_with_positions_and_heads_patches_only_there():
    m = tiny("llama")
    clean, corrupt = tokens(2, 6, seed=1), tokens(2, 6, seed=2)
    name = "blocks.1.attn.hook_z"
    _, cc = m.run_with_cache(clean, names=[name])
    src = cc[name]

    def fn(x):
        x = x.view(2, 6, m.cfg.n_heads, m.cfg.d_head).clone()
        for p in (0, 5):
            x[:, p, [0, 2]] = src[:, p, [0, 2]]
        return x.flatten(-2)

    with manual(o_proj(m, 1), fn, pre=True):
        ref = plain(m, corrupt)
    with m.intervene([Replace(name, source=src, positions=[0, -1], heads=[0, 2])]):
        got = m(corrupt)
    close(got, ref, 1e-6)
    differs(got, plain(m, corrupt))


def test_add_on_pattern_hits_query_positions_when_heads_equal_positions():
    """4 heads and 4 tokens: the pattern's head and query axes have the same size, so a
    layout mix-up between them would go unnoticed by shape checks."""
    m = tiny("llama")
    assert m.cfg.n_heads == 4
    toks = tokens(2, 4)
    name = "blocks.1.attn.hook_pattern"
    seen = {}
    vec = torch.arange(4.0)

    def rec(key):
        return lambda v, hp: seen.__setitem__(key, v.clone())

    for pos, heads in [([-1], [1]), ([0, 2], None), (None, [3])]:
        with m.hooks([(name, rec("before"))]), m.intervene([Add(name, vector=vec, positions=pos, heads=heads)]):
            with m.hooks([(name, rec("after"))]):
                m(toks)
        exp = seen["before"].clone()  # [b, h, q, k]
        hs = slice(None) if heads is None else heads
        qs = slice(None) if pos is None else [p % 4 for p in pos]
        sub = exp[:, hs][:, :, qs]
        sub += vec
        e2 = exp[:, hs]
        e2[:, :, qs] = sub
        exp[:, hs] = e2
        torch.testing.assert_close(seen["after"], exp, rtol=0, atol=1e-7)


def test_scores_intervention_at_positions():
    m = tiny("llama")
    toks = tokens(1, 5)
    name = "blocks.0.attn.hook_attn_scores"
    # forbid attending to key 0 from the last query of head 2: -inf there
    src = torch.zeros(1, 4, 5, 5)
    src[..., 0] = float("-inf")
    seen = {}
    with m.intervene([Add(name, vector=src[0, 0, 0], positions=[-1], heads=[2])]):
        with m.hooks([("blocks.0.attn.hook_pattern", lambda v, hp: seen.__setitem__("p", v.clone()))]):
            m(toks)
    p = seen["p"]
    assert p[0, 2, 4, 0] == 0
    assert (p[0, 2, :4, 0] > 0).all() and (p[0, [0, 1, 3], 4, 0] > 0).all()
    close(p.sum(-1), torch.ones(1, 4, 5))


def test_intervention_errors_name_the_problem():
    m = tiny("llama")
    toks = tokens(2, 6)
    with pytest.raises(UncoverError, match="does not broadcast"):
        with m.intervene([Replace("blocks.0.hook_resid_pre", source=torch.zeros(3, 6, 5))]):
            m(toks)
    with pytest.raises(UncoverError, match="entries"):
        with m.intervene([Project("blocks.0.hook_resid_pre", direction=torch.ones(5))]):
            m(toks)
    with pytest.raises(UncoverError, match="heads"):
        with m.intervene([Zero("blocks.0.attn.hook_z", heads=[7])]):
            m(toks)
    with pytest.raises(UncoverError, match="Intervention"):
        with m.intervene(["blocks.0.hook_resid_pre"]):  # type: ignore[list-item]
            pass
    for bad in (None, "blocks.0.hook_resid_pre", 3):
        with pytest.raises(UncoverError, match="intervention or a list"):
            with m.intervene(bad):  # type: ignore[arg-type]
                pass
    with m.intervene(Zero("blocks.0.hook_resid_pre")):  # one intervention needs no list
        one = m(toks)
    with m.intervene([Zero("blocks.0.hook_resid_pre")]):
        assert torch.equal(one, m(toks))
    # the model is usable and unchanged afterwards
    torch.testing.assert_close(m(toks), plain(m, toks), rtol=0, atol=0)


def test_negative_heads_count_from_the_end():
    m = tiny("llama")
    toks = tokens(2, 5)
    with m.intervene([Zero("blocks.0.attn.hook_z", heads=[-1])]):
        a = m(toks)
    with m.intervene([Zero("blocks.0.attn.hook_z", heads=[m.cfg.n_heads - 1])]):
        b = m(toks)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- intervention values -------------------------------------------------------------------------
def _examples() -> list[Intervention]:
    return [
        Zero("blocks.0.attn.hook_z", heads=[1]),
        Zero("blocks.1.hook_mlp_out", positions=[-1, 0]),
        Mean("blocks.0.hook_resid_post"),
        Mean("blocks.0.attn.hook_z", mean=torch.ones(4, 8) * 0.25, heads=(0, 2)),
        Replace("blocks.0.hook_resid_pre", source=torch.arange(6.0).view(1, 2, 3), positions=-1),
        Add("hook_embed", vector=[1.0, 2.0], scale=0.5),
        Add("blocks.0.attn.hook_pattern", vector=torch.zeros(3, dtype=torch.float64) + 0.1, heads=[0]),
        Project("blocks.2.hook_resid_post", direction=[0.0, 3.0, 4.0]),
        Ablate("blocks.2.hook_resid_post", direction=torch.tensor([1.0, 0.0, 0.0])),
    ]


def test_values_are_frozen():
    for iv in _examples():
        with pytest.raises(dataclasses.FrozenInstanceError):
            iv.hook = "x"  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            iv.positions = (1,)  # type: ignore[misc]


def test_values_own_their_tensors():
    v = torch.ones(3)
    iv = Add("hook_embed", vector=v)
    h = hash(iv)
    v.add_(1)  # changing the caller's tensor changes neither the value nor its hash
    assert torch.equal(iv.vector, torch.ones(3)) and hash(iv) == h
    assert not Add("hook_embed", vector=torch.ones(3, requires_grad=True)).vector.requires_grad


def test_equality_and_hashing():
    a, b = _examples(), _examples()
    for x, y in zip(a, b):
        assert x == y and hash(x) == hash(y) and x is not y
    assert len(set(a + b)) == len(a)
    assert Zero("hook_embed") != Mean("hook_embed")  # same fields, different kind
    assert Zero("hook_embed", positions=0) == Zero("hook_embed", positions=[0])
    assert Zero("hook_embed", positions=[0]) != Zero("hook_embed", positions=[1])
    assert Add("hook_embed", vector=[1.0, 2.0]) != Add("hook_embed", vector=[1.0, 2.5])
    assert Add("hook_embed", vector=[1.0, 2.0]) != Add("hook_embed", vector=[[1.0, 2.0]])  # shape matters
    assert Add("hook_embed", vector=[0.0]) != Add("hook_embed", vector=torch.zeros(0, 1))
    assert Add("hook_embed", vector=[1.0], scale=2) == Add("hook_embed", vector=[1.0], scale=2.0)
    assert Zero("hook_embed") != "hook_embed"


def test_to_dict_from_dict_round_trip_through_json():
    for iv in _examples():
        d = json.loads(json.dumps(iv.to_dict()))
        back = Intervention.from_dict(d)
        assert back == iv and type(back) is type(iv)
        for f in dataclasses.fields(iv):
            x, y = getattr(iv, f.name), getattr(back, f.name)
            if isinstance(x, torch.Tensor):
                assert x.dtype == y.dtype and torch.equal(x, y)
    d = Zero("blocks.0.hook_mlp_out", positions=[-1]).to_dict()
    assert d == {"kind": "Zero", "hook": "blocks.0.hook_mlp_out", "positions": [-1], "heads": None, "units": None}


def test_from_dict_errors_list_valid_choices():
    with pytest.raises(UncoverError) as e:
        Intervention.from_dict({"kind": "Scale", "hook": "hook_embed"})
    for k in ("Zero", "Mean", "Replace", "Add", "Project", "Ablate"):
        assert k in str(e.value)
    with pytest.raises(UncoverError, match="valid"):
        Intervention.from_dict({"hook": "hook_embed"})
    with pytest.raises(UncoverError, match="vector"):
        Intervention.from_dict({"kind": "Zero", "hook": "hook_embed", "vector": [1.0]})


def test_repr_shows_kind_and_fields():
    r = repr(Zero("blocks.0.attn.hook_z", heads=[1]))
    assert r == "Zero(hook='blocks.0.attn.hook_z', positions=None, heads=(1,), units=None)"
    r = repr(Add("hook_embed", vector=[1.0, 2.0], scale=0.5, positions=-1))
    assert r.startswith("Add(hook='hook_embed', positions=(-1,), heads=None, units=None, vector=tensor([1., 2.])")
    assert "scale=0.5" in r


def test_construction_errors():
    with pytest.raises(UncoverError, match="no head axis"):
        Zero("blocks.0.hook_resid_pre", heads=[0])
    with pytest.raises(UncoverError, match="no head axis"):
        Mean("blocks.0.mlp.hook_post", heads=1)
    with pytest.raises(UncoverError, match="source"):
        Replace("blocks.0.hook_resid_pre")
    with pytest.raises(UncoverError, match="vector"):
        Add("blocks.0.hook_resid_pre")
    with pytest.raises(UncoverError, match="non-zero"):
        Project("blocks.0.hook_resid_pre", direction=torch.zeros(4))
    with pytest.raises(UncoverError, match="one vector"):
        Ablate("blocks.0.hook_resid_pre", direction=torch.ones(2, 4))
    with pytest.raises(UncoverError, match="positions"):
        Zero("blocks.0.hook_resid_pre", positions="last")  # type: ignore[arg-type]
    with pytest.raises(UncoverError, match="positions"):
        Zero("blocks.0.hook_resid_pre", positions=[])
    with pytest.raises(UncoverError, match="hook"):
        Zero(3)  # type: ignore[arg-type]
    # heads are fine on every per-head hook
    for p in ("q", "k", "v", "z", "pattern", "attn_scores", "result"):
        Zero(f"blocks.0.attn.hook_{p}", heads=[0])


def test_pattern_path_applies_attention_softcapping():
    """Gemma 2 soft-caps scores; with a small cap (so that it matters) the pattern uncover computes
    must still equal eager attention's, and rewriting it must reproduce the logits."""
    m = tiny("gemma2")
    for layer in range(m.cfg.n_layers):
        m.adapter.attn(layer).attn_logit_softcapping = 0.02
    toks = tokens(2, 6)
    ref = plain(m, toks)
    eager = m.model(toks, output_attentions=True).attentions
    _, cache = m.run_with_cache(toks, names=lambda n: n.endswith("hook_pattern"))
    for layer in range(m.cfg.n_layers):
        close(cache[f"blocks.{layer}.attn.hook_pattern"], eager[layer], 1e-6)
    with m.hooks([("blocks.1.attn.hook_pattern", lambda v, hp: v.clone())]):
        close(m(toks), ref, 1e-6)
    with m.intervene([Zero("blocks.1.attn.hook_z", heads=[0])]):
        zeroed = m(toks)
    with m.intervene([Zero("blocks.1.attn.hook_pattern", heads=[0])]):
        close(m(toks), zeroed)


def test_gradients_flow_through_interventions_like_through_manual_hooks():
    m = tiny("llama-gqa")
    toks = tokens(2, 5)
    w = o_proj(m, 0).weight

    def grad_of(run):
        w.grad = None
        with torch.enable_grad():
            w.requires_grad_(True)
            try:
                run()[..., :3].sum().backward()
            finally:
                w.requires_grad_(False)
        return w.grad.clone()

    def with_intervention():
        with m.intervene([Zero("blocks.0.attn.hook_z", heads=[1], positions=[-1]),
                          Add("blocks.1.hook_resid_mid", vector=torch.ones(m.cfg.d_model))]):
            return m(toks)

    def by_hand():
        def z_fn(x):
            x = x.clone()
            x[:, -1, head_cols(m, 1)] = 0
            return x

        with manual(o_proj(m, 0), z_fn, pre=True), manual(m.adapter.attn(1), lambda x: x + 1):
            return plain(m, toks)

    g1, g2 = grad_of(with_intervention), grad_of(by_hand)
    assert g1.abs().max() > 0
    close(g1, g2, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_interventions_keep_the_model_dtype(dtype):
    m = _tiny("llama", dtype=dtype)
    toks = tokens(2, 5)
    vec = torch.randn(m.cfg.d_model)  # float32 values are cast to the model's dtype
    seen = {}
    with m.intervene([Add("blocks.1.hook_resid_pre", vector=vec, positions=[-1]), Mean("blocks.0.attn.hook_z")]):
        with m.hooks([("blocks.1.hook_resid_pre", lambda v, hp: seen.__setitem__("v", v))]):
            out = m(toks)
    assert out.dtype == dtype and seen["v"].dtype == dtype

    def add_last(x):
        x = x.clone()
        x[:, -1] += vec.to(dtype)
        return x

    with m.intervene([Mean("blocks.0.attn.hook_z")]), manual(m.adapter.block(1), add_last, pre=True):
        ref = m(toks)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_units_select_the_last_axis_exactly(one_thread_no_grad):
    from uncover import Add, Zero

    model = tiny("llama")
    ids = tokens()
    name = "blocks.1.mlp.hook_post"
    _, clean = model.run_with_cache(ids, names=[name])

    def zero_units(v, hp):
        v = v.clone()
        v[:, -1, [3, 7]] = 0
        return v

    ref = model.run_with_hooks(ids, [(name, zero_units)])
    with model.intervene([Zero(name, positions=[-1], units=[3, 7])]):
        out = model(ids)
        _, seen = model.run_with_cache(ids, names=[name])
    assert torch.equal(out, ref)
    assert seen[name][:, -1, [3, 7]].abs().max() == 0 and torch.equal(seen[name][:, :-1], clean[name][:, :-1])
    keep = [i for i in range(seen[name].shape[-1]) if i not in (3, 7)]
    assert torch.equal(seen[name][:, -1, keep], clean[name][:, -1, keep])
    with model.intervene([Add(name, vector=torch.ones(2), units=[0, 1])]):
        _, added = model.run_with_cache(ids, names=[name])
    assert torch.allclose(added[name][..., :2], clean[name][..., :2] + 1) and torch.equal(added[name][..., 2:],
                                                                                           clean[name][..., 2:])


def test_bad_intervention_values_are_refused(one_thread_no_grad):
    from uncover import Add, Replace, Zero
    from uncover.core.errors import UncoverError

    with pytest.raises(UncoverError, match="NaN"):
        Replace("hook_embed", source=torch.tensor([float("nan")]))
    with pytest.raises(UncoverError, match="finite"):
        Add("hook_embed", vector=[1.0], scale=float("inf"))
    model = tiny("llama")
    with pytest.raises(UncoverError, match="beyond every prompt"), model.intervene([Zero("hook_embed",
                                                                                         positions=[99])]):
        model(tokens())
    with pytest.raises(UncoverError, match="units"), model.intervene([Zero("hook_embed", units=[999])]):
        model(tokens())


def test_replace_refuses_a_source_padded_otherwise_than_the_batch_it_patches():
    """A cached value knows its batch's padding: patched into a batch padded otherwise it would put padding where
    real tokens are (issue 13). Same padding, an explicit matching mask, or a tensor with no record all work."""
    from uncover.hooks.tokens import Batch

    m = tiny("llama")
    ids = tokens(2, 6)
    right = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    left = torch.tensor([[1] * 6, [0] * 2 + [1] * 4])
    name = "blocks.1.hook_resid_pre"
    _, cache = m.run_with_cache(Batch(ids, right), names=[name])
    src = cache[name]
    with pytest.raises(UncoverError, match="padded otherwise.*real lengths"):
        with m.intervene([Replace(name, source=src)]):
            m(Batch(ids, left))
    with pytest.raises(UncoverError, match="padded otherwise"):  # a one-row source broadcast to padded rows
        _, one = m.run_with_cache(Batch(ids[:1], right[:1]), names=[name])
        with m.intervene([Replace(name, source=one[name])]):
            m(Batch(ids, left))
    with m.intervene([Replace(name, source=src)]):
        same = m(Batch(ids, right))
    ref = m(Batch(ids, right))  # patching a run with its own values changes nothing
    assert torch.equal(same[right.bool()], ref[right.bool()])
    iv = Replace(name, source=src.clone(), source_mask=right)
    assert torch.equal(Intervention.from_dict(json.loads(json.dumps(iv.to_dict()))).source_mask, right)
    with pytest.raises(UncoverError, match="padded otherwise"):
        with m.intervene([iv]):
            m(Batch(ids, left))
    with m.intervene([Replace(name, source=src.clone())]):  # no record: the caller's responsibility, as before
        m(Batch(ids, left))
    with pytest.raises(UncoverError, match="source_mask"):
        Replace(name, source=src, source_mask=torch.ones(6))
