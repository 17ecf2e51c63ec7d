"""Record a full grokking run (Nanda et al. 2023 setup: a + b mod 113) and its progress measures.

Trains (or resumes) the run in ``--out``, computes the progress measures over the weight
snapshots, writes static SVG figures to ``docs/figures/grokking_<name>_*.svg`` (no image
export dependency needed) and the numbers to ``docs/grokking.md`` (its own section, replaced
on rerun). Optionally (``--compare``) runs the weight-decay comparison and the training-fraction
sweep on the same config with ``--compare-steps`` steps each.

    nice -n 10 .venv/bin/python benchmarks/grokking_run.py --threads 1              # p = 113
    .venv/bin/python benchmarks/grokking_run.py --p 53 --steps 3000 --name p53 --analyse-only
"""

from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

import torch

from uncover.dynamics.grokking import GrokConfig, fraction_sweep, load_run, progress_measures, train
from uncover.dynamics.grokking.train import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "grokking.md"
FIG = ROOT / "docs" / "figures"
COLOURS = ["#2471a3", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#7f8c8d"]
BANDS = {"memorization": "#f5b7b1", "circuit formation": "#f9e79f", "cleanup": "#abebc6"}


def svg_lines(series: list[tuple[str, list[float], list[float]]], title: str, log: bool = False,
              bands: dict[str, tuple[int, int]] | None = None, ylabel: str = "") -> str:
    """A small self-contained SVG line chart (x = step)."""
    w, h, left, right, top, bottom = 760, 360, 70, 170, 36, 44
    pts = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys) if y == y and (not log or y > 0)]
    if not pts:
        return ""
    tf = (lambda v: math.log10(v)) if log else (lambda v: v)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts) or 1
    y0, y1 = min(tf(p[1]) for p in pts), max(tf(p[1]) for p in pts)
    if y1 - y0 < 1e-12:
        y1 = y0 + 1
    sx = lambda x: left + (x - x0) / max(x1 - x0, 1e-12) * (w - left - right)  # noqa: E731
    sy = lambda y: top + (1 - (tf(y) - y0) / (y1 - y0)) * (h - top - bottom)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           f'font-size="11"><rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    for name, (a, b) in (bands or {}).items():
        out.append(f'<rect x="{sx(a):.1f}" y="{top}" width="{max(sx(b) - sx(a), 0):.1f}" height="{h - top - bottom}" '
                   f'fill="{BANDS.get(name, "#eee")}" opacity="0.6"/>')
        out.append(f'<text x="{(sx(a) + sx(b)) / 2:.1f}" y="{top + 12}" text-anchor="middle" '
                   f'font-size="10">{name}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" fill="none" '
               'stroke="#444"/>')
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        lab = f"{10 ** yv:.2g}" if log else f"{yv:.3g}"
        yy = top + (1 - i / 4) * (h - top - bottom)
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{lab}</text>')
        xv = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{sx(xv):.1f}" y="{h - bottom + 16}" text-anchor="middle">{xv:.0f}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 8}" text-anchor="middle">step</text>')
    out.append(f'<text x="16" y="{h / 2}" transform="rotate(-90 16 {h / 2})" text-anchor="middle">{ylabel}</text>')
    for i, (name, xs, ys) in enumerate(series):
        c = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys) if y == y and (not log or y > 0))
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.6" points="{path}"/>')
        out.append(f'<line x1="{w - right + 10}" x2="{w - right + 30}" y1="{top + 14 + 16 * i}" '
                   f'y2="{top + 14 + 16 * i}" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{w - right + 34}" y="{top + 18 + 16 * i}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def markdown(df) -> str:
    """A pandas frame as a Markdown table (no tabulate needed)."""
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of docs/grokking.md."""
    start, end = f"<!-- grokking_run:{name} -->", f"<!-- /grokking_run:{name} -->"
    text = DOC.read_text() if DOC.exists() else "# Grokking\n\n"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=int, default=113)
    ap.add_argument("--op", default="+")
    ap.add_argument("--steps", type=int, default=25_000)
    ap.add_argument("--train-frac", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--d-mlp", type=int, default=512)
    ap.add_argument("--init-scale", type=float, default=4.0,
                    help="initial weights times this (4 ≈ Nanda et al.'s 1/sqrt(d_model) init; 1 = GPT-2's 0.02, "
                         "which generalises almost at once at p = 113)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--snapshot-every", type=int, default=250)
    ap.add_argument("--name", default="p113")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default out/grokking_<name>)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--analyse-only", action="store_true", help="do not train; analyse what the run has")
    ap.add_argument("--compare", action="store_true", help="also weight decay 0 and a fraction sweep")
    ap.add_argument("--compare-steps", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or ROOT / "out" / f"grokking_{args.name}"
    cfg = GrokConfig(p=args.p, op=args.op, steps=args.steps, train_frac=args.train_frac, lr=args.lr,
                     d_model=args.d_model, d_mlp=args.d_mlp, init_scale=args.init_scale, checkpoint_every=500,
                     eval_every=args.eval_every,
                     snapshot_every=args.snapshot_every)
    t0 = time.time()
    if not args.analyse_only:
        train(cfg, out, resume=latest_checkpoint(out) is not None, threads=args.threads)
    train_s = time.time() - t0
    run = load_run(out)
    cfg = run.cfg
    res = progress_measures(run, max_snapshots=100)
    m, s = res.metrics, res.measures
    FIG.mkdir(parents=True, exist_ok=True)
    figs = {
        "loss": svg_lines([("train loss", m.step.tolist(), m.train_loss.tolist()),
                           ("test loss", m.step.tolist(), m.test_loss.tolist()),
                           ("restricted loss", s.step.tolist(), s.restricted_loss.tolist()),
                           ("excluded loss", s.step.tolist(), s.excluded_loss.tolist())],
                          f"{res.title}: losses", log=True, bands=res.phases, ylabel="cross-entropy"),
        "accuracy": svg_lines([("train acc", m.step.tolist(), m.train_acc.tolist()),
                               ("test acc", m.step.tolist(), m.test_acc.tolist())],
                              f"{res.title}: accuracy", bands=res.phases, ylabel="accuracy"),
        "sparsity": svg_lines([("embed Gini", s.step.tolist(), s.embed_gini.tolist()),
                               ("W_out·W_U Gini", s.step.tolist(), s.logit_gini.tolist())],
                              f"{res.title}: Fourier sparsity (Gini)", bands=res.phases, ylabel="Gini"),
        "weight_norm": svg_lines([("total weight norm", m.step.tolist(), m.weight_norm.tolist())],
                                 f"{res.title}: weight norm", bands=res.phases, ylabel="L2 norm"),
    }
    for k, svg in figs.items():
        (FIG / f"grokking_{args.name}_{k}.svg").write_text(svg)
    last = m.iloc[-1]
    rows = [f"| {r.step} | {r.train_loss:.3g} | {r.test_loss:.3g} | {r.train_acc:.3f} | {r.test_acc:.3f} | "
            f"{r.weight_norm:.1f} |" for r in m.iloc[:: max(1, len(m) // 12)].itertuples()]
    mrows = [f"| {r.step} | {r.restricted_loss:.3g} | {r.excluded_loss:.3g} | {r.embed_gini:.3f} | "
             f"{r.logit_gini:.3f} |" for r in s.iloc[:: max(1, len(s) // 12)].itertuples()]
    body = [f"## {res.title} (`{args.name}`)", "",
            f"Config: `{cfg.to_json().replace(chr(10), '')}`. "
            f"Trained {int(last.step)} of {cfg.steps} steps"
            + ("" if args.analyse_only else f" in {train_s / 60:.1f} min wall clock on a shared 2-core CPU "
               f"({args.threads} thread)") + ".", "",
            "```", res.summary(), "```", "",
            *[f"![{k}](figures/grokking_{args.name}_{k}.svg)" for k in figs], "",
            "| step | train loss | test loss | train acc | test acc | weight norm |", "|---:|---:|---:|---:|---:|---:|",
            *rows, "", "| step | restricted loss | excluded loss | embed Gini | W_L Gini |",
            "|---:|---:|---:|---:|---:|", *mrows]
    if args.compare:
        steps = args.compare_steps or cfg.steps
        base = cfg.replace(steps=steps, snapshot_every=0, checkpoint_every=0)
        from uncover.dynamics.grokking import weight_decay_comparison

        wd = weight_decay_comparison(base, threads=args.threads)
        fr = fraction_sweep(base, (0.2, 0.3, 0.5, 0.7), threads=args.threads)
        body += ["", f"### Weight decay on/off ({steps} steps each)", "", markdown(wd.to_frame()),
                 "", f"### Training fraction sweep ({steps} steps each)", "", markdown(fr.to_frame())]
    write_section(args.name, "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
