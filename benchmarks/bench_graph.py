"""Benchmark: attribution-graph construction for a 12-token prompt, as a ratio to one forward+backward pass.

``uncover.attribution_graph`` on the embedded model with TopK skip transcoders on every layer
(``2 x d_model`` features, ``k = 16`` per token; random weights: the time depends on the number of
active features and visited nodes, not on training), for several ``max_feature_nodes`` budgets,
each timed alternately with one plain Hugging Face forward+backward of the same prompt (gradient
of the target logit w.r.t. the input embeddings). The graph's cost is one forward pass of the
replacement model plus one vectorised backward row per visited feature and target logit, plus the
influence ranking between batches.

``--circuit-tracer PYTHON`` instead compares uncover's graph with circuit-tracer's on the same
transcoders (``--transcoders``: a saved per-layer set on every layer, default the random set above),
prompt and target: ``PYTHON`` is the interpreter of an environment with circuit-tracer 0.5.0
(``benchmarks/setup_bench_env.sh`` makes ``.bench-ct-venv``), which runs
``benchmarks/circuit_tracer_graph.py``. Both visit ``--nodes`` features ranked by influence after
every batch of ``--batch-size``; the nodes are matched by circuit-tracer's node ids and the
adjacency matrices compared on the nodes both hold (Pearson r, largest absolute difference).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import common

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="64,256,1024", help="max_feature_nodes budgets (default 64,256,1024)")
    p.add_argument("--batch-size", type=int, default=64, help="targets per vectorised backward (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--no-record", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument("--circuit-tracer", default=None, metavar="PYTHON",
                   help="compare with circuit-tracer run by this interpreter (e.g. .bench-ct-venv/bin/python)")
    p.add_argument("--transcoders", default=None, help="saved per-layer set on every layer (default: random)")
    p.add_argument("--prompt", default="The capital of France is", help="prompt of the comparison")
    p.add_argument("--target", default=" Paris", help="target of the comparison")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import uncover
    from uncover.graphs import attribution_graph
    from uncover.transcoders import Transcoder, TranscoderConfig, TranscoderSet, mlp_in, mlp_out

    model = uncover.load()
    d = model.cfg.d_model
    if args.transcoders:
        tset = TranscoderSet.load(args.transcoders)
    else:
        tset = TranscoderSet({la: Transcoder(TranscoderConfig(d_in=d, d_sae=2 * d, d_out=d, k=16, skip=True,
                                                              hook_name=mlp_in(la), hook_name_out=mlp_out(la)),
                                             seed=la) for la in range(model.cfg.n_layers)})
    if args.circuit_tracer:
        compare(model, tset, args)
        return
    ids = common.make_input_ids(model.tokenizer, 1, 12)[0]
    target = int(model(ids[None])[0, -1].argmax())

    def forward_backward() -> None:
        with torch.enable_grad():
            e = model.model.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
            model.model(inputs_embeds=e, use_cache=False).logits[0, -1, target].backward()

    rows = []
    for n in [int(x) for x in args.nodes.split(",")]:
        g = attribution_graph(model, tset, ids, max_feature_nodes=n, batch_size=args.batch_size)
        t = common.time_paired(lambda n=n: attribution_graph(model, tset, ids, max_feature_nodes=n,
                                                             batch_size=args.batch_size),
                               forward_backward, repeats=args.repeats, warmup=1)
        rows.append([f"{g.n_features} of {g.n_active} features", str(g.backward_passes), common.fmt_ms(t.median),
                     common.fmt_ms(t.floor_median), f"{t.ratio:.1f}×", f"{t.cpu_ratio:.1f}×"])
        print(rows[-1], flush=True)
    headers = ["visited features", "backward rows", "graph ms", "fwd+bwd ms", "wall ratio", "CPU ratio"]
    body = common.table(headers, rows, [False, True, True, True, True, True])
    print(body)
    if not args.no_record:
        section = f"bench_graph ({common.env_label()})"
        extra = (f"12-token prompt, embedded model, TopK skip transcoders on all {model.cfg.n_layers} layers "
                 f"({2 * d} features, k=16; random weights), batch {args.batch_size} rows per vectorised backward; "
                 "floor: one HF forward+backward of the prompt (gradient w.r.t. input embeddings)")
        common.record(section, "\n".join([f"## {section}", "", *common.header_lines(extra), "", body, ""]))


def compare(model: Any, tset: Any, args: argparse.Namespace) -> None:
    """uncover's graph against circuit-tracer's on the same transcoders, prompt and target (recorded)."""
    import torch
    from safetensors.torch import load_file

    from uncover.graphs import attribution_graph

    tok = model.tokenizer
    special = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ids = torch.tensor([special] + model.to_tokens(args.prompt)[0].tolist())  # circuit-tracer wants a BOS first
    target = model.to_single_token(args.target)
    n = int(args.nodes.split(",")[0])
    cpu = []
    for _ in range(2):  # the second run is timed warm, as circuit-tracer's second below
        t0, c0 = time.perf_counter(), time.process_time()
        g = attribution_graph(model, tset, ids, [args.target], max_feature_nodes=n, batch_size=args.batch_size)
        cpu.append((time.perf_counter() - t0, time.process_time() - c0))
    ours_ids = [g.node(i)["node_id"] for i in range(len(g.adjacency))]
    with tempfile.TemporaryDirectory() as tmp:
        tc_dir = Path(args.transcoders) if args.transcoders else tset.save(Path(tmp) / "tc")
        from uncover.models.load import cache_dir

        model_dir = next((cache_dir() / "gguf").glob("SmolLM2-135M-Instruct*"))
        cmd = [args.circuit_tracer, str(HERE / "circuit_tracer_graph.py"), "--model-dir", str(model_dir),
               "--transcoders", str(tc_dir), "--tokens", ",".join(map(str, ids.tolist())), "--target", str(target),
               "--max-feature-nodes", str(n), "--batch-size", str(args.batch_size), "--update-interval", "1",
               "--repeats", "2",
               "--out", tmp, "--validate-json", str(g.save_json(Path(tmp) / "uncover_graph.json"))]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=common.quiet_env())
        ct = load_file(str(Path(tmp) / "ct_graph.safetensors"))
        meta = json.loads((Path(tmp) / "ct_graph.json").read_text())
    theirs_ids = meta["node_ids"]
    where = {nid: i for i, nid in enumerate(theirs_ids)}
    common_ids = [nid for nid in ours_ids if nid in where]
    iu = torch.tensor([ours_ids.index(nid) for nid in common_ids])
    ic = torch.tensor([where[nid] for nid in common_ids])
    a_u = g.adjacency[iu][:, iu].double()
    a_c = ct["adjacency"][ic][:, ic].double()
    nf_u = g.n_features
    feats_common = sum(1 for nid in common_ids if ours_ids.index(nid) < nf_u)
    nz = (a_u != 0) | (a_c != 0)
    r = float(torch.corrcoef(torch.stack([a_u[nz], a_c[nz]]))[0, 1])
    diff = (a_u - a_c).abs()
    logit_u, logit_c = a_u[-1], a_c[-1]
    r_logit = float(torch.corrcoef(torch.stack([logit_u, logit_c]))[0, 1])
    rows = [
        ["prompt, target", f"{args.prompt!r} (+ BOS) -> {args.target!r}"],
        ["transcoders", f"{tset.kind} on {len(tset.layers)} layers, {tset.n_features} features"
                        + (f" ({args.transcoders})" if args.transcoders else " (random weights)")],
        ["active features (uncover / circuit-tracer)", f"{g.n_active} / {meta['n_active']}"],
        ["visited features in both", f"{feats_common} of {nf_u} / {len(theirs_ids) - (len(ours_ids) - nf_u)}"],
        ["edges compared (non-zero in either)", f"{int(nz.sum())}"],
        ["Pearson r of the edge weights", f"{r:.6f}"],
        ["largest abs difference / largest abs edge", f"{float(diff.max()):.3g} / {float(a_u.abs().max()):.3g}"],
        ["Pearson r of the edges into the target logit", f"{r_logit:.6f}"],
        ["largest abs difference into the logit", f"{float((logit_u - logit_c).abs().max()):.3g}"],
        ["uncover's graph JSON read by circuit-tracer's viewer models", meta["schema"]],
        ["uncover attribution_graph, warm (wall s, CPU s)", "{:.1f}, {:.1f}".format(*cpu[-1])],
        ["circuit-tracer attribute, warm (wall s, CPU s)", "{:.1f}, {:.1f}".format(*meta["seconds"][-1])],
    ]
    body = common.table(["", "value"], rows)
    print(body)
    if not args.no_record:
        section = f"bench_graph vs circuit-tracer ({common.env_label()})"
        extra = (f"circuit-tracer {meta['circuit_tracer']} (TransformerLens backend, its own environment), "
                 f"{n} features visited, batch {args.batch_size}, re-ranked after every batch in both; "
                 "circuit-tracer's position-0 zeroing turned off (uncover has none)")
        common.record(section, "\n".join([f"## {section}", "", *common.header_lines(extra), "", body, ""]))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
