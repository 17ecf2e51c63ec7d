"""Benchmark: cost of caching activations, against the plain Hugging Face forward pass.

On the embedded SmolLM2-135M-Instruct, batch 8 × 64 tokens of English text, all under
``torch.no_grad()``:

* the floor: the HF model's own forward (default ``sdpa`` attention);
* uncover ``run_with_cache`` of the residual-stream hooks (``hook_embed``,
  ``hook_resid_pre/mid/post``, ``hook_attn_out``, ``hook_mlp_out``): goal ≤ 1.05× the floor;
* uncover ``run_with_cache`` of every hook, per-head ones included (``names=None``):
  goal ≤ 1.10× the floor (issue 13; with the default allocator). Values uncover derives rather
  than reads (``hook_result``, ``hook_resid_mid``, scores and patterns) may be held as recipes
  computed on first access: the row counts them as ``N + M lazy``, and *cache MiB* includes the
  tensors the recipes keep alive;
* the same through TransformerLens (``TransformerBridge.run_with_cache``) and nnsight
  (a trace saving the same residual values; ``tracer.cache()`` of every module), when
  those libraries are installed (see ``setup_bench_env.sh``).

Each configuration runs in a fresh subprocess, so its peak RSS means something. Inside
it the configuration and the floor are timed alternately after a warm-up, and the
ratio is median(configuration) / median(floor) of that same process. Peers get their
own copy of the HF model (TransformerLens switches its model to eager attention in
place), built from the model object already loaded: no network is needed.

    python benchmarks/bench_cache.py [--repeats 10] [--batch 8] [--seq 64]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

RESID_POINTS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_embed")


def is_resid(name: str) -> bool:
    """The residual-stream subset: embed, resid pre/mid/post, attention and MLP outputs."""
    return any(p in name for p in RESID_POINTS)


KEEP_FREED_MEMORY = {
    "MALLOC_TRIM_THRESHOLD_": str(16 << 30),  # never give the top of the heap back to the OS
    "MALLOC_TOP_PAD_": str(256 << 20),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),  # the largest allowed: tensors up to 32 MiB come from the heap
}
"""Environment for ``--keep-freed-memory``: freed memory stays in the process for reuse."""

THP = {"THP_MEM_ALLOC_ENABLE": "1"}
"""Environment for ``--thp``: PyTorch's CPU allocator asks for transparent huge pages (2 MiB) for large
tensors, so a cache's fresh memory costs ~512x fewer page faults (read once, when torch starts)."""

SETUP_HINT = "run in .bench-venv (bash benchmarks/setup_bench_env.sh)"


class Skip(Exception):
    """A configuration that cannot run here (e.g. a peer library is not installed)."""


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    goal: float | None = None


CONFIGS: tuple[Config, ...] = (
    Config("hf", "HF forward (floor, sdpa)"),
    Config("hf-eager", "HF forward, eager attention (reference)"),
    Config("uncover-resid", "uncover run_with_cache, residual hooks", 1.05),
    Config("uncover-all", "uncover run_with_cache, every hook (names=None)", 1.10),
    Config("tl-resid", "TransformerLens run_with_cache, residual hooks"),
    Config("tl-all", "TransformerLens run_with_cache, every hook"),
    Config("nnsight-resid", "nnsight trace saving the residual values"),
    Config("nnsight-all", "nnsight tracer.cache(), every module output"),
)


# ---- worker side -------------------------------------------------------------------------
@dataclass
class Setup:
    hooked: Any
    hf: Any
    tok: Any
    input_ids: Any
    attention_mask: Any

    def floor(self) -> Any:
        return self.hf(input_ids=self.input_ids, attention_mask=self.attention_mask, use_cache=False).logits


def cached_stats(obj: Any) -> tuple[int | str, float]:
    """(number of cached tensors, MiB of their distinct storages) in a nested cache object.

    An uncover ``ActivationCache`` counts its stored tensors plus its recipes (``"N + M lazy"``), and
    its MiB include the tensors the recipes keep alive.
    """
    import torch

    from uncover.hooks.cache import ActivationCache

    if isinstance(obj, ActivationCache):
        held = [*obj.store.values(), *(t for lazy in set(obj.pending.values()) for t in lazy.inputs)]
        _, mb = cached_stats(held)
        n = len(obj.store)
        return (f"{n} + {len(obj.pending)} lazy" if obj.pending else n), mb
    seen: dict[int, int] = {}
    count = 0
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            count += 1
            s = x.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif hasattr(x, "output") and hasattr(x, "inputs"):  # nnsight cache entry
            stack.append(x.output)
    return count, sum(seen.values()) / 2**20


def _peer_model(s: Setup) -> tuple[Any, Any]:
    """A private copy of the HF model and tokenizer for a peer library."""
    import copy

    return copy.deepcopy(s.hf), copy.deepcopy(s.tok)


def build(key: str, s: Setup) -> Callable[[], tuple[Any, Any]]:
    """The callable for configuration ``key``: returns ``(logits, cache-like object)``."""
    import torch

    if key == "hf":
        return lambda: (s.floor(), None)
    if key == "hf-eager":
        hf, _ = _peer_model(s)
        hf.set_attn_implementation("eager")
        return lambda: (hf(input_ids=s.input_ids, attention_mask=s.attention_mask, use_cache=False).logits, None)
    if key.startswith("uncover"):
        from uncover.hooks.tokens import Batch

        batch = Batch(s.input_ids, s.attention_mask)
        names = is_resid if key == "uncover-resid" else None

        def run_uncover() -> tuple[Any, Any]:
            return s.hooked.run_with_cache(batch, names=names)

        return run_uncover
    if key.startswith("tl"):
        try:
            from transformer_lens.model_bridge import TransformerBridge
        except ImportError as e:
            raise Skip(f"{e.name} is not installed in this environment; {SETUP_HINT}") from None
        hf, tok = _peer_model(s)
        # The hub id only names the architecture; config and weights come from hf_model (offline).
        bridge = TransformerBridge.boot_transformers(
            "HuggingFaceTB/SmolLM2-135M-Instruct", hf_model=hf, tokenizer=tok, device=str(s.input_ids.device),
            dtype=hf.dtype,
        )
        filt = is_resid if key == "tl-resid" else None

        def run_tl() -> tuple[Any, Any]:
            logits, cache = bridge.run_with_cache(s.input_ids, names_filter=filt, attention_mask=s.attention_mask)
            return logits, dict(cache.items())

        return run_tl
    if key.startswith("nnsight"):
        try:
            from nnsight import TransformersModel
        except ImportError as e:
            raise Skip(f"{e.name} is not installed in this environment; {SETUP_HINT}") from None
        hf, tok = _peer_model(s)
        nm = TransformersModel(hf, tokenizer=tok, task="text-generation")
        inputs = {"input_ids": s.input_ids, "attention_mask": s.attention_mask}
        n_layers = hf.config.num_hidden_layers

        if key == "nnsight-resid":

            def run_nnsight() -> tuple[Any, Any]:
                saved: dict[str, Any] = {}
                with torch.no_grad(), nm.trace(inputs):
                    saved["hook_embed"] = nm.model.embed_tokens.output.save()
                    for i in range(n_layers):
                        layer = nm.model.layers[i]
                        saved[f"blocks.{i}.hook_resid_pre"] = layer.input.save()
                        saved[f"blocks.{i}.hook_attn_out"] = layer.self_attn.output[0].save()
                        saved[f"blocks.{i}.hook_resid_mid"] = layer.post_attention_layernorm.input.save()
                        saved[f"blocks.{i}.hook_mlp_out"] = layer.mlp.output.save()
                        saved[f"blocks.{i}.hook_resid_post"] = layer.output.save()
                    logits = nm.output.logits.save()
                return logits, saved

            return run_nnsight

        def run_nnsight_all() -> tuple[Any, Any]:
            with torch.no_grad(), nm.trace(inputs) as tracer:
                cache = tracer.cache()
                logits = nm.output.logits.save()
            return logits, {k: v for k, v in cache._cache.entries.items()}

        return run_nnsight_all
    raise SystemExit(f"unknown configuration {key!r}")


def _card(device: str) -> str:
    """The accelerator's name (``torch.cuda.get_device_name()``), or ``""`` on the CPU."""
    import torch

    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else ""


def _synced(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """``fn`` that waits for the GPU to finish, so that wall times are the work's (CUDA runs asynchronously)."""
    if not device.startswith("cuda"):
        return fn
    import torch

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def worker(key: str, args: argparse.Namespace) -> None:
    """Run one configuration in this (fresh) process and print its result line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import uncover

    hooked = uncover.load(args.model, device=args.device)
    input_ids = common.make_input_ids(hooked.tokenizer, args.batch, args.seq).to(args.device)
    s = Setup(hooked, hooked.model, hooked.tokenizer, input_ids, torch.ones_like(input_ids))
    result: dict[str, Any] = {"key": key, "threads": torch.get_num_threads(), "card": _card(args.device)}
    with torch.no_grad():
        try:
            fn = build(key, s)
        except Skip as e:
            common.emit({**result, "skip": str(e)})
            return
        except Exception as e:  # a peer that cannot run offline: report why, don't crash the table
            common.emit({**result, "skip": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
            return
        for prm in s.hf.parameters():  # page in lazily mapped weights, so +RSS is the run's own memory
            prm.sum()
        rss_setup = common.rss_mb()
        reset_ok = common.reset_peak_rss()
        ref = s.floor()
        logits, cache = fn()
        result["n_cached"], result["cached_mb"] = cached_stats(cache)
        result["max_dlogits"] = float((logits.float() - ref.float()).abs().max())
        del logits, cache, ref
        paired = common.time_paired(_synced(fn, args.device), _synced(s.floor, args.device), args.repeats, args.warmup)
    result.update(
        median=paired.median,
        floor=paired.floor_median,
        ratio=paired.ratio,
        cpu_ratio=paired.cpu_ratio,
        times=paired.times,
        floor_times=paired.floor_times,
        cpu=paired.cpu,
        floor_cpu=paired.floor_cpu,
        rss_setup_mb=rss_setup,
        peak_rss_mb=common.peak_rss_mb(),
        peak_since_setup=reset_ok,
    )
    common.emit(result)


# ---- orchestrator ------------------------------------------------------------------------
def render(results: list[tuple[Config, dict[str, Any]]], args: argparse.Namespace) -> str:
    headers = ["configuration", "tensors cached", "cache MiB", "median ms", "floor ms", "ratio", "goal",
               "CPU-time ratio", "peak RSS MiB", "+RSS MiB", "max abs Δlogits"]
    rows = []
    notes = []
    for cfg, r in results:
        if "skip" in r or "error" in r:
            why = r.get("skip") or r.get("error")
            rows.append([cfg.label, "—", "—", "—", "—", "skipped", _goal(cfg.goal), "—", "—", "—", "—"])
            notes.append(f"- {cfg.label}: skipped: {why}")
            continue
        rows.append([
            cfg.label,
            str(r["n_cached"]),
            f"{r['cached_mb']:.0f}",
            common.fmt_ms(r["median"]),
            common.fmt_ms(r["floor"]),
            f"{r['ratio']:.3f}×",
            _goal(cfg.goal, r["ratio"]),
            f"{r['cpu_ratio']:.3f}×",
            common.fmt_mb(r["peak_rss_mb"]),
            common.fmt_mb(r["peak_rss_mb"] - r["rss_setup_mb"]),
            f"{r['max_dlogits']:.1e}",
        ])
        lo, hi = min(r["floor_times"]), max(r["floor_times"])
        if hi > NOISY * lo:
            notes.append(f"- {cfg.label}: the floor took {lo * 1e3:.0f}–{hi * 1e3:.0f} ms in this process: other load "
                         "on the machine; trust the ratios more than the times")
    right = [False, True, True, True, True, True, False, True, True, True, True]
    out = common.table(headers, rows, right)
    if notes:
        out += "\n\n" + "\n".join(notes)
    return out


NOISY = 1.25
"""Rows whose floor times spread more than this factor get a note."""


def _goal(goal: float | None, ratio: float | None = None) -> str:
    if goal is None:
        return ""
    if ratio is None:
        return f"≤ {goal:.2f}×"
    return f"≤ {goal:.2f}× {'met' if ratio <= goal else 'MISSED'}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=10, help="timed calls per configuration (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--batch", type=int, default=8, help="prompts per batch (default 8)")
    p.add_argument("--seq", type=int, default=64, help="tokens per prompt (default 64)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu); GPU rows name the card")
    p.add_argument("--model", default=None, help="model to load (default: the embedded SmolLM2-135M-Instruct)")
    keys_help = "comma-separated configuration keys (a partial run is not recorded): " + ", ".join(
        c.key for c in CONFIGS)
    p.add_argument("--only", default="", help=keys_help)
    p.add_argument("--no-record", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="tell glibc malloc to keep freed memory in the process (no trimming), so each call's\n"
                        "cache reuses pages instead of faulting fresh ones in; separates the cost of new memory\n"
                        "from the cost of the hooks (recorded as its own section)")
    p.add_argument("--thp", action="store_true",
                   help="set THP_MEM_ALLOC_ENABLE=1 in the workers: torch's allocator uses huge pages for large\n"
                        "tensors (fewer page faults for fresh cache memory; recorded as its own section)")
    p.add_argument("--json", type=Path, help="also write the raw per-configuration results (all timings) here")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per configuration process (default 1200)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args)
        return

    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = set(keys) - {c.key for c in CONFIGS}
    if unknown:
        p.error(f"unknown configuration(s) {sorted(unknown)}")
    configs = [c for c in CONFIGS if not keys or c.key in keys]
    passthrough = ["--repeats", str(args.repeats), "--warmup", str(args.warmup), "--batch", str(args.batch),
                   "--seq", str(args.seq), "--threads", str(args.threads), "--device", args.device,
                   *(["--model", args.model] if args.model else [])]
    print(f"bench_cache: batch {args.batch} × {args.seq} tokens, {args.warmup} warm-up + {args.repeats} timed calls; "
          f"{common.machine()}", flush=True)
    results: list[tuple[Config, dict[str, Any]]] = []
    for cfg in configs:
        print(f"  {cfg.label} ...", end=" ", flush=True)
        extra_env = {**(KEEP_FREED_MEMORY if args.keep_freed_memory else {}), **(THP if args.thp else {})}
        env = common.quiet_env(extra_env or None)
        r = common.run_worker([__file__, "--worker", cfg.key, *passthrough], env, args.timeout)
        results.append((cfg, r))
        if "ratio" in r:
            print(f"{r['median'] * 1e3:.1f} ms ({r['ratio']:.3f}× floor){' on ' + r['card'] if r.get('card') else ''}",
                  flush=True)
        else:
            print(f"skipped ({r.get('skip') or r.get('error')})", flush=True)

    if args.json:
        args.json.write_text(json.dumps({c.key: r for c, r in results}, indent=1))
    threads = next((r["threads"] for _, r in results if "threads" in r), "?")
    body = render(results, args)
    print()
    print(body)
    if keys:
        print("\n(partial run with --only: BENCHMARKS.md left as it was)")
    elif not args.no_record:
        card = next((r["card"] for _, r in results if r.get("card")), "")
        section = (f"bench_cache ({common.env_label()}{', ' + card if card else ''}"
                   f"{', --keep-freed-memory' if args.keep_freed_memory else ''}{', --thp' if args.thp else ''})")
        extra = (f"{'device ' + args.device + ' (' + card + '), ' if card else ''}"
                 f"{'model ' + args.model + ', ' if args.model else ''}"
                 f"batch {args.batch} × {args.seq} tokens, {args.warmup} warm-up + {args.repeats} timed calls "
                 f"(interleaved with the floor), torch threads {threads}, `torch.no_grad()`")
        if args.keep_freed_memory:
            settings = " ".join(f"{k}={v}" for k, v in KEEP_FREED_MEMORY.items())
            extra += f", glibc malloc keeping freed memory (`{settings}`)"
        if args.thp:
            extra += ", `THP_MEM_ALLOC_ENABLE=1` (torch's CPU allocator on transparent huge pages)"
        text = "\n".join([f"## {section}", "", *common.header_lines(extra), "", body, "", COLUMNS])
        common.record(section, text)
        print(f"\nrecorded in {common.BENCHMARKS_MD}")


COLUMNS = """Columns:

- *tensors cached*, *cache MiB*: what the call returned (distinct storages, so views count once).
- *median ms*: the configuration's median wall time; *floor ms*: the median of the plain HF forward,
  timed alternately with it in the same process.
- *ratio*: the median over rounds of (configuration time / floor time of that round); the goal is checked
  on it. *CPU-time ratio*: the same with the process's CPU time (all threads), which counts work rather
  than waiting for a core, so it stays steady when other processes load the machine.
- *peak RSS*: the process's peak resident memory while timing (model, any peer copy, caches); *+RSS*: that
  peak minus the RSS right after set-up (model loaded, peer built), i.e. what running it costs in memory.
- *max abs Δlogits*: its logits against the floor's.

The peers get a private copy of the model. TransformerLens switches its copy to eager attention (so that
attention patterns can be hooked); the eager-attention row shows what that alone costs."""


if __name__ == "__main__":
    main()
