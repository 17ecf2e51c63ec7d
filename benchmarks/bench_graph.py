"""Benchmark: attribution-graph construction for a 12-token prompt, as a ratio to one forward+backward pass.

``uncover.attribution_graph`` on the embedded model with TopK skip transcoders on every layer
(``2 x d_model`` features, ``k = 16`` per token; random weights: the time depends on the number of
active features and visited nodes, not on training), for several ``max_feature_nodes`` budgets,
each timed alternately with one plain Hugging Face forward+backward of the same prompt (gradient
of the target logit w.r.t. the input embeddings). The graph's cost is one forward pass of the
replacement model plus one vectorised backward row per visited feature and target logit, plus the
influence ranking between batches.
"""

from __future__ import annotations

import argparse
import os
import time

import common


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="64,256,1024", help="max_feature_nodes budgets (default 64,256,1024)")
    p.add_argument("--batch-size", type=int, default=64, help="targets per vectorised backward (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--no-record", action="store_true", help="do not update BENCHMARKS.md")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import uncover
    from uncover.graphs import attribution_graph
    from uncover.transcoders import Transcoder, TranscoderConfig, TranscoderSet, mlp_in, mlp_out

    model = uncover.load()
    d = model.cfg.d_model
    tset = TranscoderSet({la: Transcoder(TranscoderConfig(d_in=d, d_sae=2 * d, d_out=d, k=16, skip=True,
                                                          hook_name=mlp_in(la), hook_name_out=mlp_out(la)), seed=la)
                          for la in range(model.cfg.n_layers)})
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


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
