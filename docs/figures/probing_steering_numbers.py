"""Compute the numbers of docs/probing.md and docs/steering.md on the embedded model.

Usage: ``python docs/figures/probing_steering_numbers.py OUT_DIR``; writes OUT_DIR/numbers.json
(then ``python docs/figures/probing_steering_figures.py OUT_DIR`` renders the PNGs).
"""

from __future__ import annotations

import json
import sys
import time


def main(out_dir: str) -> None:
    import torch

    import uncover
    from uncover.data.activations import collect, resid_hooks
    from uncover.data.labelled import honesty_pairs, sentiment_pairs, sentiment_texts, truth_pairs, truth_statements
    from uncover.probing import causal_check, ccs_layers, fit_probe, probe_layers
    from uncover.steering import actadd, caa, fit_iti, generate, reading_vectors, sweep

    torch.set_num_threads(2)
    o, out, t0 = out_dir.rstrip("/") + "/", {}, time.time()
    m = uncover.load()
    s = truth_statements(m)
    curve = probe_layers(collect(m, s, resid_hooks(m), progress=False), dataset="truth statements (SmolLM2-135M)")
    print(curve.summary(), flush=True)
    out["curve"] = curve.to_frame().to_dict("records")
    p = truth_pairs(m)
    h3 = resid_hooks(m, range(0, 30, 3))
    pos, neg = collect(m, p.positive, h3, progress=False), collect(m, p.negative, h3, progress=False)
    r = ccs_layers(pos, neg, p.labels, groups=p.groups, dataset="truth pairs (SmolLM2-135M)")
    print(r.summary(), flush=True)
    out["ccs"] = r.to_frame().to_dict("records")
    hp = honesty_pairs(m)
    rp, rn = collect(m, hp.positive, h3, progress=False), collect(m, hp.negative, h3, progress=False)
    rr = reading_vectors(rp, rn, groups=hp.groups, dataset="honesty pairs (SmolLM2-135M)")
    print(rr.summary(), flush=True)
    out["reading"] = rr.to_frame().to_dict("records")
    hook = "blocks.12.hook_resid_post"
    sa = collect(m, sentiment_texts(), [hook], progress=False)
    probe = fit_probe(sa[hook], sa.labels)
    prompts = ["I watched the film last night and it was", "Overall, my experience was", "The waiter was"]
    cc = causal_check(m, probe.direction, hook, prompts, [" great", " good", " wonderful"],
                      [" bad", " terrible", " awful"], scales=(-1, -0.5, 0, 0.5, 1))
    print(cc.summary(), flush=True)
    out["causal"] = {"scales": cc.scales, "score": cc.score, "ablated": cc.ablated}
    iti = fit_iti(m, s, k=16)
    out["iti"] = {"heads": iti.heads, "acc": iti.accuracy}
    print("iti", iti.heads[:8], iti.accuracy[:8], flush=True)
    sp = sentiment_pairs()
    steer = caa(m, sp.positive, sp.negative, [12])
    prompts = ["I went to see the new film yesterday. I thought it was", "My day at work was",
               "The food at the new place downtown is", "Honestly, the weekend was"]
    sw = sweep(m, steer, prompts, [-8, -4, 0, 4, 8], max_new_tokens=16, method="CAA sentiment, layer 12")
    print(sw.summary(), flush=True)
    out["sweep"], out["sweep_gens"] = sw.to_frame().to_dict("records"), sw.generations
    a = actadd(m, "Love", "Hate", layer=6, coeff=5)
    out["actadd"] = {"steered": generate(m, ["I hate you because"], a, 20),
                     "plain": generate(m, ["I hate you because"], None, 20)}
    print(out["actadd"], "seconds", time.time() - t0, flush=True)
    with open(o + "numbers.json", "w") as f:
        json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
