"""SAELens interop: every cfg.json field SAELens defines is computed as SAELens computes it, or refused.

The reference below is SAELens 6.18's inference path written out independently of uncover
(``sae_lens/saes/sae.py`` ``process_sae_in``/``_setup_activation_normalization``/hook_z reshaping,
``topk_sae.py`` ``encode``/``decode``, ``jumprelu_sae.py``, ``standard_sae.py``, and
``loading/pretrained_sae_loaders.py`` ``handle_pre_6_0_config`` for configs without ``sae_lens_version``).
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import tiny, tokens
from uncover.sae import SAE, SAEConfig, SAEError, attach_sae

D_IN, D_SAE, N_HEADS = 8, 24, 2


# ---- SAELens, written out -----------------------------------------------------------------------
def ref_defaults(cfg: dict) -> dict:
    """``handle_config_defaulting``: a config without sae_lens_version >= 6 goes through the pre-6 path."""
    meta = cfg.get("metadata") or {}
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    if version and int(str(version).split(".")[0]) >= 6:
        return {**cfg, "hook_name": meta.get("hook_name")}
    new = {{"hook_point": "hook_name", "activation_fn_str": "activation_fn"}.get(k, k): v for k, v in cfg.items()}
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("architecture", "standard")
    new.setdefault("reshape_activations", "hook_z" if "hook_z" in new.get("hook_name", "") else "none")
    if new.get("activation_fn") == "topk" and new.get("activation_fn_kwargs", {}).get("k") is not None:
        new["architecture"], new["k"] = "topk", new["activation_fn_kwargs"]["k"]
    if isinstance(new.get("normalize_activations"), bool):
        new["normalize_activations"] = "expected_average_only_in" if new["normalize_activations"] else "none"
    new["normalize_activations"] = new.get("normalize_activations") or "none"
    return new


def ref_forward(cfg: dict, w: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature acts, reconstruction) as SAELens computes them."""
    cfg = ref_defaults(cfg)
    d_head = None
    if cfg.get("reshape_activations", "none") == "hook_z":
        d_head = x.shape[-1]
        x = x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
    norm = cfg.get("normalize_activations", "none")
    if norm == "constant_norm_rescale":
        coeff = cfg["d_in"] ** 0.5 / x.norm(dim=-1, keepdim=True)
        x = x * coeff
    elif norm == "layer_norm":
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)
        x = x / (std + 1e-5)
    sae_in = x - w["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    hidden_pre = sae_in @ w["W_enc"] + w["b_enc"]
    arch = cfg.get("architecture", "standard")
    rescale = arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False)
    if arch == "topk":
        if rescale:
            hidden_pre = hidden_pre * w["W_dec"].norm(dim=-1)
        vals, idx = torch.topk(hidden_pre, k=cfg.get("k", 100), dim=-1, sorted=False)
        acts = torch.zeros_like(hidden_pre).scatter_(-1, idx, vals.relu())
    elif arch == "jumprelu":
        acts = hidden_pre * (hidden_pre > w["threshold"])
    else:
        acts = torch.relu(hidden_pre)
    f = acts / w["W_dec"].norm(dim=-1) if rescale else acts
    if "scaling_factor" in w:  # SAELens < 6: apply_finetuning_scaling_factor
        f = f * w["scaling_factor"]
    out = f @ w["W_dec"] + w["b_dec"]
    if norm == "constant_norm_rescale":
        out = out / coeff
    elif norm == "layer_norm":
        out = out * std + mu
    if d_head is not None:
        out = out.reshape(*out.shape[:-1], out.shape[-1] // d_head, d_head)
    return acts, out


# ---- helpers ------------------------------------------------------------------------------------
def weights(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with decoder rows of very different norms (so the rescale matters)."""
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.5,
         "W_dec": torch.randn(D_SAE, D_IN, generator=g) * torch.linspace(0.05, 3.0, D_SAE)[:, None],
         "b_enc": torch.randn(D_SAE, generator=g) * 0.1, "b_dec": torch.randn(D_IN, generator=g) * 0.3}
    if arch == "jumprelu":
        w["threshold"] = torch.rand(D_SAE, generator=g) * 0.5
    return w


def write(tmp, cfg: dict, w: dict[str, torch.Tensor]):
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in w.items()}, tmp / "sae_weights.safetensors")
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    return tmp


def v6(arch: str, hook: str = "blocks.1.hook_resid_post", **fields) -> dict:
    cfg = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.18.0", "model_name": "tiny", "hook_name": hook,
                        "hook_head_index": None, "prepend_bos": True, "context_size": 128}}
    if arch == "topk":
        cfg["k"] = 4
    cfg.update(fields)
    return cfg


def x_for(cfg: dict, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, D_IN, generator=g) * 2 + 0.5
    return x.reshape(3, 5, N_HEADS, D_IN // N_HEADS) if ref_defaults(cfg).get("reshape_activations") == "hook_z" else x


def check(tmp, cfg: dict, w: dict[str, torch.Tensor]) -> SAE:
    sae = SAE.load(write(tmp, cfg, w))
    x = x_for(cfg)
    f_ref, out_ref = ref_forward(cfg, w, x)
    with torch.no_grad():
        f = sae.encode(x)
        out = sae.decode(f)
    torch.testing.assert_close(f, f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x).detach(), out_ref, rtol=1e-5, atol=1e-5)
    return sae


# ---- the fields that change what is computed ------------------------------------------------------
GRID = [(arch, b, norm, reshape, rescale)
        for arch, b, norm, reshape, rescale in itertools.product(
            ["standard", "topk", "jumprelu"], [True, False], ["none", "constant_norm_rescale", "layer_norm"],
            ["none", "hook_z"], [False, True])
        if arch == "topk" or not rescale]


def test_every_computed_field_matches_saelens(tmp_path):
    """architecture x apply_b_dec_to_input x normalize_activations x reshape_activations x rescale."""
    for i, (arch, b, norm, reshape, rescale) in enumerate(GRID):
        hook = "blocks.1.attn.hook_z" if reshape == "hook_z" else "blocks.1.hook_resid_post"
        fields = {"apply_b_dec_to_input": b, "normalize_activations": norm, "reshape_activations": reshape}
        if arch == "topk":
            fields["rescale_acts_by_decoder_norm"] = rescale
        cfg = v6(arch, hook, **fields)
        sae = check(tmp_path / str(i), cfg, weights(arch, seed=i))
        assert (sae.cfg.architecture, sae.cfg.normalize_activations, sae.cfg.reshape_activations,
                sae.cfg.rescale_acts_by_decoder_norm) == (arch, norm, reshape, rescale)


def test_rescale_changes_the_code_materially(tmp_path):
    """The flag is not a no-op on these weights: reading it as false would be silently wrong."""
    w = weights("topk")
    x = x_for(v6("topk"))
    f_on, _ = ref_forward(v6("topk", rescale_acts_by_decoder_norm=True), w, x)
    f_off, _ = ref_forward(v6("topk"), w, x)
    assert not torch.equal((f_on > 0), (f_off > 0))
    sae = check(tmp_path, v6("topk", rescale_acts_by_decoder_norm=True), w)
    # the same function once the decoder norms are folded in (SAELens's fold_W_dec_norm)
    x2 = x.reshape(-1, D_IN)
    before = sae(x2).detach()
    sae.normalize_decoder()
    torch.testing.assert_close(sae(x2).detach(), before, rtol=1e-5, atol=1e-5)


def test_pre_v6_configs(tmp_path):
    """No sae_lens_version: old keys renamed, topk from activation_fn_kwargs, hook_z reshape by default."""
    w = weights("topk")
    old = {"d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3},
           "hook_point": "blocks.0.attn.hook_z", "hook_point_layer": 0, "hook_point_head_index": None,
           "normalize_activations": False, "dtype": "torch.float32", "finetuning_scaling_factor": False,
           "l1_coefficient": 5.0, "lp_norm": 1.0, "use_ghost_grads": False}
    sae = check(tmp_path / "a", old, w)
    assert (sae.cfg.architecture, sae.cfg.k, sae.cfg.reshape_activations) == ("topk", 3, "hook_z")
    # v6 without the key: "none" (the dataclass default), as SAELens
    cfg = v6("standard", "blocks.0.attn.hook_z")
    del cfg["reshape_activations"]
    assert check(tmp_path / "b", cfg, weights("standard")).cfg.reshape_activations == "none"
    # pre-6 finetuning scaling factor: (f * s) @ W_dec, folded into W_dec
    w = {**weights("standard"), "scaling_factor": torch.linspace(0.5, 2.0, D_SAE)}
    old = {"d_in": D_IN, "d_sae": D_SAE, "architecture": "standard", "hook_name": "blocks.0.hook_resid_pre",
           "finetuning_scaling_factor": True}
    sae = check(tmp_path / "c", old, w)
    assert sae.cfg.to_saelens()["finetuning_scaling_factor"] is False
    with pytest.raises(SAEError, match="finetuning_scaling_factor false"):
        SAE.load(write(tmp_path / "d", {**old, "finetuning_scaling_factor": False}, w))


def test_expected_average_only_in_needs_its_factor(tmp_path):
    w = weights("jumprelu")
    cfg = v6("jumprelu", normalize_activations="expected_average_only_in")
    with pytest.raises(SAEError, match="norm_scaling_factor"):
        SAE.load(write(tmp_path, cfg, w))
    s = 3.0  # SAELens's fold_activation_norm_scaling_factor
    folded = {**w, "W_enc": w["W_enc"] * s, "W_dec": w["W_dec"] / s, "b_dec": w["b_dec"] / s}
    sae = SAE.load(tmp_path, norm_scaling_factor=s)
    x = x_for(cfg)
    f_ref, out_ref = ref_forward(v6("jumprelu"), folded, x)
    torch.testing.assert_close(sae.encode(x).detach(), f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x).detach(), out_ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(SAEError, match="norm_scaling_factor is for"):
        SAE.load(write(tmp_path / "n", v6("jumprelu"), w), norm_scaling_factor=2.0)


def test_dtype_and_kept_fields(tmp_path):
    w = {k: v.double() for k, v in weights("standard").items()}
    sae = SAE.load(write(tmp_path / "a", v6("standard", dtype="float64"), w))
    assert sae.W_enc.dtype == torch.float64
    x = x_for(v6("standard")).double()
    torch.testing.assert_close(sae(x).detach(), ref_forward(v6("standard"), w, x)[1])
    # training hyper-parameters and data descriptions do not change the computation
    extra = {"decoder_init_norm": 0.1, "aux_loss_coefficient": 1.0, "use_sparse_activations": True,
             "model_from_pretrained_kwargs": {"center_writing_weights": False}, "seqpos_slice": [1, None],
             "dataset_path": "x", "exclude_special_tokens": True}
    check(tmp_path / "b", v6("topk", **extra), weights("topk"))


REFUSED = [
    ({"architecture": "gated"}, "valid: jumprelu, standard, topk"),
    ({"architecture": "transcoder", "d_out": 8}, "d_out"),
    ({"new_field_from_saelens_7": 1}, "new_field_from_saelens_7"),
    ({"normalize_activations": "rms"}, "valid: none, constant_norm_rescale, layer_norm"),
    ({"reshape_activations": "hook_q"}, "valid: none, hook_z"),
    ({"dtype": "int8"}, "valid: float32, float64"),
    ({"rescale_acts_by_decoder_norm": True}, "topk SAEs only"),
    ({"metadata": {"sae_lens_version": "6.1.0", "hook_name": "blocks.0.attn.hook_z", "hook_head_index": 2}},
     "hook_head_index=2"),
    ({"reshape_activations": "hook_z"}, "for attn.hook_z SAEs"),
    ({"activation_fn": "tanh-relu"}, "valid: relu"),
]


@pytest.mark.parametrize("fields,match", REFUSED)
def test_refused_fields(tmp_path, fields, match):
    with pytest.raises(SAEError, match=match):
        SAE.load(write(tmp_path, v6("standard", **fields), weights("standard")))


def test_saved_config_takes_saelens_current_path(tmp_path):
    """What SAELens 6 reads from our cfg.json (dataclass fields flat, the hook from metadata) is the SAE."""
    cfg = v6("topk", "blocks.1.attn.hook_z", reshape_activations="hook_z", rescale_acts_by_decoder_norm=True,
             normalize_activations="layer_norm")
    w = weights("topk")
    sae = SAE.load(write(tmp_path / "in", cfg, w))
    sae.save(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert int(saved["metadata"]["sae_lens_version"].split(".")[0]) >= 6
    topk_fields = ("d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                   "reshape_activations", "k", "rescale_acts_by_decoder_norm")
    assert {f: saved[f] for f in topk_fields} == {f: cfg[f] for f in topk_fields}
    assert saved["architecture"] == "topk" and saved["metadata"]["hook_name"] == "blocks.1.attn.hook_z"
    assert saved["metadata"]["context_size"] == 128 and saved["metadata"]["prepend_bos"] is True
    back = load_file(tmp_path / "out" / "sae_weights.safetensors")
    assert all(torch.equal(back[k], w[k]) for k in w)
    check(tmp_path / "again", saved, back)  # our saved file, read as SAELens reads it


def test_hook_z_sae_on_a_model(one_thread):
    """A hook_z SAE attaches to [batch, pos, n_heads, d_head] values; flat rows (harvest) work too."""
    m = tiny("llama")
    c = m.cfg
    d_in = c.n_heads * c.d_head
    sae_cfg = SAEConfig(d_in=d_in, d_sae=16, architecture="topk", k=4, hook_name="blocks.1.attn.hook_z",
                        reshape_activations="hook_z")
    from uncover.sae import TopKSAE

    sae = TopKSAE(sae_cfg)
    ids = tokens()
    with torch.no_grad():
        clean = m(ids)
        with attach_sae(m, sae) as att:
            same = m(ids)
        with attach_sae(m, sae, use_error_term=False) as att2:
            spliced = m(ids)
    assert att["hook_sae_recons"].shape == (*ids.shape, c.n_heads, c.d_head)
    torch.testing.assert_close(same, clean)
    assert not torch.allclose(spliced, clean)
    x = att2["hook_sae_input"]
    flat = sae(x.flatten(-2)).detach()
    torch.testing.assert_close(att2["hook_sae_recons"].flatten(-2), flat)
