"""The GPU gate: uncover's parity identities and the big-model path on a CUDA device.

For every tiny family of ``tests/conftest.py``, each attention implementation (``sdpa``, ``eager``,
and ``flash_attention_2`` when the ``flash_attn`` package is installed) and float32 / bfloat16:

* *no-op hooks*: every hook attached (attention patterns included) leaves the logits bit-identical,
  and ``run_with_cache`` returns the plain logits;
* *residual*: embedding + attention and MLP outputs sum to the final residual; heads sum to
  ``hook_attn_out`` (to the dtype's tolerance);
* *pattern*: cached attention patterns are rows that sum to 1 and equal the eager implementation's;
* *vs CPU*: logits, and logits under an intervention on a pattern, against the same model on the CPU
  in float32;
* *moved*: a hook that returns a CPU tensor on a CUDA model is moved to the hook's device.

Then a tiny Llama split by a ``device_map`` between ``cuda:0``, CPU offload and disk offload against
the same model resident on the GPU: logits, every cached value, an intervention and a weight edit with
its bit-exact revert.

    python benchmarks/gpu_gate.py [--device cuda] [--out DIR]

Prints one table (naming the card) and writes it to ``DIR/gpu_gate.md``; exits 1 if a check fails.
``benchmarks/gpu_gate.sh`` runs this, then ``bench_cache`` and ``bench_patching`` on the device.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

import torch  # noqa: E402

from tests.conftest import KINDS, tiny_hf, tokens  # noqa: E402
from uncover import HookedModel  # noqa: E402
from uncover.hooks import weights  # noqa: E402
from uncover.hooks.interventions import Add, Zero  # noqa: E402

Rows = list[list[str]]


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max())


def _tol(dtype: torch.dtype, scale: float, ulps: float) -> float:
    return ulps * torch.finfo(dtype).eps * max(scale, 1e-30)


class Gate:
    def __init__(self, device: str):
        self.device = device
        self.rows: Rows = []
        self.failed = 0

    def check(self, what: list[str], err: float, tol: float) -> None:
        ok = err <= tol
        self.failed += not ok
        self.rows.append([*what, f"{err:.2e}", f"{tol:.1e}", "ok" if ok else "FAIL"])

    def crash(self, what: list[str], e: BaseException) -> None:
        self.failed += 1
        self.rows.append([*what, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}", "", "FAIL"])

    def guarded(self, what: list[str], fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # a crash is a failed check, not the end of the gate
            self.crash(what, e)


def model_on(kind: str, attn: str, dtype: torch.dtype, device: str) -> HookedModel:
    hf = tiny_hf(kind, "eager" if kind == "gemma2" else attn, dtype)  # gemma2's tiny config is eager only
    if attn != "sdpa":
        hf.set_attn_implementation(attn)
    return HookedModel(hf.to(device), None, name=f"tiny-{kind}")


def family_checks(g: Gate, kind: str, attn: str, dtype: torch.dtype) -> None:
    dev = g.device
    tag = [kind, attn, str(dtype).removeprefix("torch.")]
    m = model_on(kind, attn, dtype, dev)
    toks = tokens().to(dev)
    with torch.no_grad():  # the plain model, called as uncover calls it (an explicit all-ones mask)
        plain = m.model(input_ids=toks, attention_mask=torch.ones_like(toks), use_cache=False).logits
        with m.hooks([(n, lambda v, hp: v) for n in m.hook_names()]):
            hooked = m(toks)
        logits, cache = m.run_with_cache(toks)
    g.check([*tag, "no-op hooks (bit-identical)"], max(_err(hooked, plain), _err(logits, plain)), 0.0)
    comps, _ = cache.decompose_resid()
    final = cache.final_resid()
    scale = float(final.abs().max())
    ulps = 1.0e3 if dtype == torch.float32 else 2 * len(comps)
    g.check([*tag, "residual: components sum to the final residual"], _err(comps.double().sum(0), final),
            _tol(dtype, scale, ulps))
    worst = 0.0
    for layer in range(m.cfg.n_layers):
        heads = cache.head_results(layer).double().sum(-2)
        b = m.adapter.b_O(layer)
        heads = heads if b is None else heads + b.double()
        out = cache[f"blocks.{layer}.hook_attn_out"]
        worst = max(worst, _err(heads, out) / max(float(out.abs().max()), 1e-30))
    g.check([*tag, "residual: heads sum to hook_attn_out (relative)"], worst,
            _tol(dtype, 1.0, 1.0e3 if dtype == torch.float32 else 8 * m.cfg.n_heads))
    pat = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"] for i in range(m.cfg.n_layers)])
    g.check([*tag, "pattern rows sum to 1"], _err(pat.double().sum(-1), torch.ones(pat.shape[:-1])),
            _tol(dtype, 1.0, 64))
    if attn != "eager":
        ref = model_on(kind, "eager", dtype, dev)
        with torch.no_grad():
            _, rc = ref.run_with_cache(toks, names=lambda n: n.endswith("hook_pattern"))
        rpat = torch.stack([rc[f"blocks.{i}.attn.hook_pattern"] for i in range(m.cfg.n_layers)])
        g.check([*tag, "pattern equals eager's"], _err(pat, rpat), _tol(dtype, 1.0, 64))
    cpu = model_on(kind, "eager", torch.float32, "cpu")
    ivs = [Zero("blocks.1.attn.hook_pattern", heads=[0]),
           Add("blocks.2.hook_resid_pre", vector=torch.ones(m.cfg.d_model))]
    with torch.no_grad():
        want = cpu(toks.cpu())
        with cpu.intervene(ivs):
            want_iv = cpu(toks.cpu())
        with m.intervene(ivs):
            got_iv = m(toks)
    s = float(want.abs().max())
    ulps = 1.0e3 if dtype == torch.float32 else 32 * m.cfg.n_layers
    g.check([*tag, "logits vs CPU float32"], _err(plain, want), _tol(dtype, s, ulps))
    g.check([*tag, "intervened logits vs CPU float32"], _err(got_iv, want_iv), _tol(dtype, s, ulps))
    with torch.no_grad(), m.hooks([("blocks.1.hook_mlp_out", lambda v, hp: (2 * v).cpu())]):
        moved = m(toks)
    with torch.no_grad(), m.hooks([("blocks.1.hook_mlp_out", lambda v, hp: 2 * v)]):
        there = m(toks)
    g.check([*tag, "hook returning a CPU tensor is moved"], _err(moved, there), 0.0)


def big_model_checks(g: Gate) -> None:
    """A tiny Llama with layers on the GPU, CPU-offloaded and disk-offloaded, against all on the GPU."""
    import transformers as T

    tag = ["llama", "device_map", "float32"]
    d = Path(tempfile.mkdtemp(prefix="uncover-gate-"))
    tiny_hf("llama").save_pretrained(d)
    ref = HookedModel(T.AutoModelForCausalLM.from_pretrained(d).to(g.device).eval(), None)
    gpu = 0 if g.device.startswith("cuda") else "cpu"  # on a CPU-only run "cpu" is resident, not offloaded
    dmap = {"model.embed_tokens": gpu, "model.rotary_emb": gpu, "model.layers.0": gpu, "model.layers.1": "cpu",
            "model.layers.2": "disk", "model.norm": gpu, "lm_head": gpu}
    big = HookedModel(T.AutoModelForCausalLM.from_pretrained(d, device_map=dmap, offload_folder=str(d / "off")).eval(),
                      None)
    toks = tokens()
    with torch.no_grad():
        a, b = ref(toks), big(toks)
        g.check([*tag, f"split {sorted(set(map(str, big.device_map.values())))}: logits"], _err(a, b), 0.0)
        _, ca = ref.run_with_cache(toks)
        _, cb = big.run_with_cache(toks)
        g.check([*tag, "every cached value (gathered on one device)"],
                max(_err(ca[n], cb[n]) for n in ca) + (0.0 if {cb[n].device for n in cb} == {big.device} else 1.0), 0.0)
        ivs = [Zero("blocks.2.attn.hook_result", heads=[1]), Zero("blocks.1.attn.hook_pattern", heads=[0])]
        with ref.intervene(ivs):
            ia = ref(toks)
        with big.intervene(ivs):
            ib = big(toks)
        g.check([*tag, "intervention on offloaded layers"], _err(ia, ib), 0.0)
        delta = {p: 0.05 * torch.ones(weights.parameters(big)[p].shape) for p in
                 ("model.layers.1.mlp.down_proj.weight", "model.layers.2.self_attn.o_proj.weight",
                  "model.layers.0.mlp.up_proj.weight")}
        oa, ob = weights.apply_change(ref, delta), weights.apply_change(big, delta)
        ea, eb = ref(toks), big(toks)
        weights.restore(ref, oa)
        weights.restore(big, ob)
        g.check([*tag, "weight edit (GPU, CPU-offloaded, disk-offloaded)"], _err(ea, eb), 0.0)
        g.check([*tag, "revert is bit-exact"], _err(big(toks), b) + float(torch.equal(ea, a)), 0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="torch device to gate (default cuda)")
    p.add_argument("--out", type=Path, default=None, help="write gpu_gate.md here")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated tiny families (default: all)")
    args = p.parse_args(argv)
    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_gate: no CUDA device visible to torch", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    torch.backends.cuda.matmul.allow_tf32 = False  # identities are checked at float32's own precision
    torch.backends.cudnn.allow_tf32 = False
    card = torch.cuda.get_device_name() if dev.startswith("cuda") else "CPU"
    attns = ["sdpa", "eager"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    g = Gate(dev)
    t0 = time.perf_counter()
    for kind in [k for k in args.kinds.split(",") if k]:
        for attn in attns:
            if kind == "gemma2" and attn != "eager":
                continue
            for dtype in (torch.float32, torch.bfloat16):
                if attn == "flash_attention_2" and dtype == torch.float32:
                    continue  # flash attention computes in half precision only
                g.guarded([kind, attn, str(dtype).removeprefix("torch."), "(crashed)"],
                          lambda k=kind, a=attn, t=dtype: family_checks(g, k, a, t))
    g.guarded(["llama", "device_map", "float32", "(crashed)"], lambda: big_model_checks(g))
    head = ["family", "attention", "dtype", "check", "max error", "tolerance", "result"]
    import common

    body = common.table(head, g.rows, [False, False, False, False, True, True, False])
    flash = "" if "flash_attention_2" in attns else " (flash_attn not installed: flash attention not gated)"
    text = "\n".join([f"## gpu_gate ({card})", "", *common.header_lines(
        f"device {dev}: {card}, torch {torch.__version__}, CUDA {torch.version.cuda}{flash}; "
        f"{len(g.rows)} checks, {g.failed} failed, {time.perf_counter() - t0:.0f} s"), "", body, ""])
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_gate.md").write_text(text)
    return 1 if g.failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
