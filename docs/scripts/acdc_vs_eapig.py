"""ACDC against EAP-IG on the embedded model's IOI task: edge overlap and faithfulness.

8 IOI prompts the model gets right (``ioi(16, seed=0).filter_correct(model)``, as in docs/circuits.md).
EAP-IG scores every edge; ACDC (``metric``, threshold ``tau``) prunes EAP-IG's top ``--candidates``
edges (edges outside them are kept while it runs and never tried). The ACDC circuit is its
surviving candidate edges; it is compared with EAP-IG's top-n circuit of the same size (overlap)
and both are scored by faithfulness (corrupt ablation of every edge outside the circuit: the
circuit's logit difference over the full model's, and normalised (circuit − empty)/(full − empty)).

    python docs/scripts/acdc_vs_eapig.py [--candidates 300] [--tau 0.02] [--metric kl]
"""

from __future__ import annotations

import argparse
import time

import torch

import uncover
from uncover.circuits.acdc import acdc
from uncover.circuits.eap import eap
from uncover.circuits.faithfulness import circuit_metrics
from uncover.circuits.patch import EdgePatcher
from uncover.circuits.prompts import Prompts
from uncover.data.tasks import ioi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--tau", default="0.02", help="comma-separated thresholds (default 0.02)")
    ap.add_argument("--metric", default="kl")
    ap.add_argument("--prompts", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = uncover.load()
    prompts = Prompts.from_task(model, ioi(16, seed=0).filter_correct(model), args.prompts)
    t0 = time.time()
    ig = eap(model, prompts, method="eap-ig")
    print(f"EAP-IG on {prompts.n} prompts: {time.time() - t0:.1f} s")
    cand = ig.top(args.candidates)
    patcher = EdgePatcher(model, prompts, "corrupt")
    full = ig._with(ig.graph.valid.clone())
    full_ld, empty_ld = circuit_metrics(patcher, [full, ig.top(0)], "logit_diff")
    print(f"logit diff: full {full_ld:.2f}, every edge ablated {empty_ld:.2f}")

    def faith(c) -> tuple[float, float]:
        (v,) = circuit_metrics(patcher, [c], "logit_diff")
        return v / full_ld, (v - empty_ld) / (full_ld - empty_ld)

    print("\n| circuit | edges | overlap with EAP-IG top-n | logit diff circuit/full | normalised | time s |")
    print("|---|---:|---:|---:|---:|---:|")
    f = faith(cand)
    print(f"| EAP-IG top {args.candidates} (ACDC's candidates) | {cand.n_edges} | — | {f[0]:.2f} | {f[1]:.2f} | |")
    for tau in [float(t) for t in args.tau.split(",")]:
        t0 = time.time()
        a = acdc(model, prompts, tau=tau, metric=args.metric, candidates=cand)
        dt = time.time() - t0
        kept = a.kept & cand.kept  # the surviving candidates; non-candidate edges were only context
        circ = a._with(kept)
        n = circ.n_edges
        same = ig.top(n)
        overlap = int((same.kept & kept).sum())
        fa, fi = faith(circ), faith(same)
        print(f"| ACDC τ={tau:g} ({args.metric}) | {n} | {overlap}/{n} ({overlap / max(n, 1):.0%}) | {fa[0]:.2f} | "
              f"{fa[1]:.2f} | {dt:.0f} |")
        print(f"| EAP-IG top {n} | {n} | | {fi[0]:.2f} | {fi[1]:.2f} | |")
        print(f"|   (ACDC: {a.meta['tried']} edges tried in {a.meta['batches']} batches, KL "
              f"{a.meta['start_value']:.3f} → {a.meta['final_value']:.3f} with non-candidates kept) | | | | | |",
              flush=True)
        top_heads = [e for e in circ.edges()[:10]]
        print("    strongest kept ACDC edges:", ", ".join(f"{s}→{r} {d:+.3f}" for s, r, d in top_heads))


if __name__ == "__main__":
    main()
