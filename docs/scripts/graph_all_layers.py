"""An attribution graph over transcoders on every layer of the embedded model (``docs/graphs.md``).

1. Trains (once; then cached by :func:`uncover.transcoders.quick_transcoders` under a file lock)
   per-layer TopK skip transcoders on all 30 MLPs of SmolLM2-135M-Instruct: ``ALL_LAYERS`` below
   (2 x d_model = 1152 features, k = 32, 16,128 training tokens, 300 steps of 256 tokens per layer).
2. Evaluates them on 16 held-out blocks of 64 tokens (variance explained, error-node size, CE with all
   30 MLPs replaced at once).
3. Builds the graph of ``--prompt`` -> ``--target``: node counts, the error nodes' share of the
   influence, the kept features with the highest influence and their top contexts on held-out text.
4. Checks the graph against the real model (:func:`uncover.graphs.validate.feature_effects`): the
   ``--n-check`` features with the largest direct effect on the target are removed (scale -1),
   doubled (scale +1) and nudged by a tenth of their output (scale -0.1: the regime where a linear
   account can hold) in the real model; Pearson r of the measured and predicted target changes.
5. Finds where the real model departs from the graph: the nudge of the top feature of layer
   ``n_layers - 2`` again, with the last layer's MLP output (then also its attention output) frozen at
   their clean values.

    python docs/scripts/graph_all_layers.py [--train-only] [--threads 1]
    python docs/scripts/graph_all_layers.py --prompt "The capital of France is" --target " Paris"

Runtime on the shared 2-core machine: see ``docs/graphs.md`` (training dominates; it runs once).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

import uncover
from uncover.transcoders.quick import QuickTranscoderSpec, cache_path, quick_transcoders

#: the all-layer set of docs/graphs.md (a cache key: changing a field trains a new set)
ALL_LAYERS = QuickTranscoderSpec(layers=None, expansion=2, k=32, skip=True, n_blocks=256, block_len=64, steps=300,
                                 batch_size=256, lr=2e-3, seed=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--target", default=" Paris")
    p.add_argument("--max-feature-nodes", type=int, default=256)
    p.add_argument("--n-check", type=int, default=20, help="features checked against the real model")
    p.add_argument("--scales", default="-1,1,-0.1", help="multiples of a feature's output added in the checks")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--json", default=None, help="also write the graph in circuit-tracer's schema here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = uncover.load()
    t0, c0 = time.perf_counter(), time.process_time()
    cached = cache_path(model, ALL_LAYERS).is_dir()
    tset = quick_transcoders(model, ALL_LAYERS, progress=False)
    print(f"transcoder set: {tset.kind} on {len(tset.layers)} layers, {tset.n_features} features; "
          f"{'loaded from the cache' if cached else 'trained'} in {time.perf_counter() - t0:.0f} s wall, "
          f"{time.process_time() - c0:.0f} s CPU ({cache_path(model, ALL_LAYERS)})", flush=True)
    if args.train_only:
        return

    from uncover.data.corpus import token_blocks
    from uncover.graphs import attribution_graph
    from uncover.graphs.validate import agreement, feature_effects
    from uncover.neurons.top import top_activations
    from uncover.transcoders import evaluate_transcoders, mlp_in
    from uncover.transcoders.data import harvest_pairs

    heldout = token_blocks(model, block_len=64, split="heldout")
    t0 = time.perf_counter()
    ev = evaluate_transcoders(model, tset, heldout[:16])
    print(ev.summary(), f"({time.perf_counter() - t0:.0f} s)")
    print(ev.to_frame().round(3).to_string(index=False), flush=True)

    g = attribution_graph(model, tset, args.prompt, [args.target], max_feature_nodes=args.max_feature_nodes,
                          batch_size=32)
    print(g.summary(), flush=True)
    nf, nl, npos = g.n_features, g.n_layers, g.n_pos
    kept = g.node_mask
    print(f"kept nodes: {int(kept[:nf].sum())} features, {int(kept[nf:nf + nl * npos].sum())} error nodes, "
          f"{npos} embeddings, {len(g.targets)} logit(s); {int(g.edge_mask.sum())} edges")
    infl = g.influence.clamp(min=0)
    f_inf, e_inf = float(infl[:nf].sum()), float(infl[nf:nf + nl * npos].sum())
    t_inf = float(infl[nf + nl * npos: nf + nl * npos + npos].sum())
    print(f"influence shares (before pruning): features {f_inf / (f_inf + e_inf + t_inf):.3f}, errors "
          f"{e_inf / (f_inf + e_inf + t_inf):.3f}, embeddings {t_inf / (f_inf + e_inf + t_inf):.3f}; errors among "
          f"features and errors {e_inf / (f_inf + e_inf):.3f}")
    err = [(float(infl[nf + i]), g.node(nf + i)["label"]) for i in range(nl * npos)]
    print("error nodes of most influence:", ", ".join(f"{lab} {v:.3f}" for v, lab in sorted(err, reverse=True)[:6]))
    print("tokens:", g.tokens)
    top = g.top_features(10)
    print(f"{'feature':>16} {'act':>6} {'influence':>9} {'logit edge':>10}")
    for f in top:
        print(f"{f['label']:>16} {f['activation']:6.2f} {f['influence']:9.4f} {f['logit_effect']:+10.3f}")
    for f in top[:6]:
        la, idx = f["layer"], f["feature"]
        w = tset.W_enc(la)[:, idx].detach()
        r = top_activations(model, mlp_in(la), direction=w, tokens=heldout[:64], k=4, window=(6, 1))
        b = float(tset.b_enc(la)[idx].detach())
        x, _ = harvest_pairs(model, [la], heldout[:32])
        with torch.no_grad():
            density = float((tset.encode(la, x[:, 0])[:, idx] > 0).float().mean())
        print(f"--- {f['label']}: active (in the top k) on {density:.1%} of {len(x)} held-out tokens; top contexts "
              "by encoder pre-activation over 64 held-out blocks")
        for rank in range(4):
            toks, _, m = r.context(0, rank)
            ctx = "".join(toks[:m]) + "[[" + toks[m] + "]]" + "".join(toks[m + 1:])
            print(f"  {float(r.values[0, rank]) + b:5.2f}  {ctx!r}")
    names = {-1.0: "removed", 1.0: "doubled"}
    for scale in (float(v) for v in args.scales.split(",")):
        name = names.get(scale, "steered")
        df = feature_effects(model, tset, g, n=args.n_check, scale=scale)
        same = float(((df["predicted_total"] > 0) == (df["measured"] > 0)).mean())
        print(f"features {name} (scale {scale:+g}): Pearson r direct {agreement(df, 'predicted_direct'):.3f}, "
              f"total {agreement(df, 'predicted_total'):.3f}; sign agreement {same:.0%}; median |measured / "
              f"predicted| {float((df['measured'] / df['predicted_total']).abs().median()):.2f}")
        print(df.round(4).to_string(index=False), flush=True)
    last_but_one(model, tset, g)
    if args.json:
        g.save_json(args.json)
        print(json.dumps({"written": args.json}))


@torch.no_grad()
def last_but_one(model: Any, tset: Any, g: Any) -> None:
    """Nudge (-0.1) the most influential feature of layer n-2 with the last layer's MLP/attention outputs frozen."""
    from uncover.hooks.interventions import Add
    from uncover.transcoders import mlp_out

    last = model.cfg.n_layers - 1
    top = [f for f in g.top_features(50) if f["layer"] == last - 1][:1]
    if not top:
        return
    f = top[0]
    ids = torch.tensor(g.token_ids)[None]
    t = g.target_ids[0]

    def value(logits: torch.Tensor) -> float:
        z = logits[0, -1].double()
        return float(z[t] - z.mean())

    frozen = [mlp_out(last), f"blocks.{last}.hook_attn_out"]
    base = value(model(ids))
    _, cache = model.run_with_cache(ids, frozen)
    w = dict(tset.decoders_to(f["layer"]))[f["layer"]][f["feature"]].detach()
    add = [Add(mlp_out(f["layer"]), vector=w, scale=-0.1 * f["activation"], positions=[f["pos"]])]
    out = []
    for names in ([], frozen[:1], frozen):
        with model.intervene(add), model.hooks([(n, lambda v, hp, n=n: cache[n]) for n in names]):
            out.append(value(model(ids)) - base)
    print(f"{f['label']} nudged by -0.1: graph's direct edge predicts {-0.1 * f['logit_effect']:+.4f}; "
          f"real model {out[0]:+.4f}; with layer {last}'s MLP output frozen {out[1]:+.4f}; with its attention "
          f"output frozen too {out[2]:+.4f}")


if __name__ == "__main__":
    main()
