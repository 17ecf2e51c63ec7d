"""ITI against CAA on the embedded model: truthful-answer accuracy against KL on neutral text.

Both methods are fitted on the same training facts (true and false statements from
:func:`uncover.data.labelled.truth_statements`, split by subject) and evaluated on the held-out facts'
prompts ("The Eiffel Tower is in the city of"): accuracy = the true object's first token scores above
the false one's; ``p(true)`` = the true object's probability; ``log-odds`` = logit(true) − logit(false).
KL = mean per-token KL(unsteered ‖ steered) on 4 held-out corpus blocks of 64 tokens. Both steer every
position of a plain forward pass.

    python docs/scripts/iti_vs_caa.py [--k 16] [--layer 10]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import uncover
from uncover.data.corpus import token_blocks
from uncover.data.labelled import Labelled, _statements
from uncover.steering.iti import fit_iti
from uncover.steering.methods import caa, steering
from uncover.steering.sweep import _kl


def split_facts(seed: int = 0, train_fraction: float = 0.5) -> tuple[list, list]:
    """(train, test) fact rows ``(prompt, true, false, subject)``, split by subject."""
    rows = _statements(None, seed)
    subjects = sorted({r[3] for r in rows})
    random.Random(seed).shuffle(subjects)
    train_s = set(subjects[: round(len(subjects) * train_fraction)])
    return [r for r in rows if r[3] in train_s], [r for r in rows if r[3] not in train_s]


def statements(rows: list) -> Labelled:
    """True (1) and false (0) statements of ``rows``, grouped by subject."""
    texts, labels, groups = [], [], []
    for prompt, o, f, s in rows:
        for obj, lab in ((o, 1), (f, 0)):
            texts.append(f"{prompt}{obj}.")
            labels.append(lab)
            groups.append(s)
    return Labelled("truth", texts, labels, groups, ("false", "true"))


@torch.no_grad()
def score(model, rows: list, steer=None) -> dict[str, float]:
    """Accuracy, mean p(true) and mean log-odds of the true over the false object at each prompt's end."""
    tok = model.tokenizer
    first = [(tok(o, add_special_tokens=False)["input_ids"][0], tok(f, add_special_tokens=False)["input_ids"][0])
             for _, o, f, _ in rows]
    batch = model.tokenize([r[0] for r in rows])
    with steering(model, steer):
        logits = model(batch).float()
    last = batch.columns(-1)[:, 0]
    lg = logits[torch.arange(len(rows)), last]  # [n, vocab]
    t, f = torch.tensor([a for a, _ in first]), torch.tensor([b for _, b in first])
    lt, lf = lg.gather(1, t[:, None])[:, 0], lg.gather(1, f[:, None])[:, 0]
    p = lg.softmax(-1).gather(1, t[:, None])[:, 0]
    return {"acc": float((lt > lf).float().mean()), "p_true": float(p.mean()), "logodds": float((lt - lf).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=16, help="ITI heads (default 16)")
    ap.add_argument("--layer", type=int, default=10, help="CAA layer (default 10)")
    ap.add_argument("--alphas", default="0,2,5,10,15,20")
    ap.add_argument("--mults", default="0,0.5,1,2,4,8")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = uncover.load()
    train, test = split_facts()
    data = statements(train)
    print(f"{len(train)} training facts ({len(data)} statements), {len(test)} held-out facts")
    neutral = token_blocks(model, block_len=64, split="heldout")[:4]
    with torch.no_grad():
        ref = model(neutral).float().log_softmax(-1)

    t0 = time.time()
    iti = fit_iti(model, data, k=args.k, alpha=1.0)
    print(f"ITI fitted in {time.time() - t0:.1f} s; heads {iti.heads[:8]}..., val acc "
          f"{iti.accuracy[0]:.2f}..{iti.accuracy[-1]:.2f}")
    pos = [t for t, y in zip(data.texts, data.labels) if y == 1]
    neg = [t for t, y in zip(data.texts, data.labels) if y == 0]
    vec = caa(model, pos, neg, [args.layer])

    print("\n| method | strength | accuracy | mean p(true) | log-odds | KL nats/token |")
    print("|---|---|---|---|---|---|")
    for name, steer, strengths in (("ITI", iti, args.alphas), (f"CAA L{args.layer}", vec, args.mults)):
        for s in [float(x) for x in strengths.split(",")]:
            st = steer.scaled(s) if s else None
            r = score(model, test, st)
            kl = 0.0 if st is None else _kl(model, st, neutral, ref)
            print(f"| {name} | {s:g} | {r['acc']:.2f} | {r['p_true']:.3f} | {r['logodds']:+.2f} | {kl:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
