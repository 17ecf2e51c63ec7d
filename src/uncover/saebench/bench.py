"""SAE metrics in the spirit of SAEBench (Karvonen et al. 2025), sized for a CPU: one table per SAE.

- core metrics from :func:`uncover.sae.evaluate_sae` on held-out text: L0, dead and dense latents,
  variance explained, and the loss recovered ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``;
- sparse probing on the built-in labelled sets (:mod:`uncover.saebench.probing`) for each ``k``,
  with the full-width probe on the SAE's inputs as the reference;
- feature absorption on the first-letter task (:mod:`uncover.saebench.absorption`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.progress import Progress
from uncover.core.results import Result
from uncover.probing import fit_probe
from uncover.sae import evaluate_sae
from uncover.saebench.absorption import Absorption, absorption, first_letter_words, word_inputs
from uncover.saebench.probing import pooled_latents, sparse_probe, stratified_split

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.data.containers import Labelled
    from uncover.hooks.hooked import HookedModel

#: (metric, what it means, better when)
ABOUT = {
    "l0": ("mean active latents per token", "lower"),
    "dead": ("fraction of latents never active", "lower"),
    "dense": ("fraction of latents active on > 10% of tokens", "lower"),
    "fve": ("fraction of variance explained", "higher"),
    "ce_clean": ("next-token cross-entropy, clean (nats)", ""),
    "ce_sae": ("cross-entropy with the SAE spliced in", "lower"),
    "ce_zero": ("cross-entropy with the hook zero-ablated", ""),
    "loss_recovered": ("(CE_zero - CE_sae) / (CE_zero - CE_clean)", "higher"),
    "absorption": ("mean first-letter absorption rate", "lower"),
    "absorption_false_negatives": ("mean share of letter words no main latent catches", "lower"),
    "first_letter_probe": ("test accuracy of the first-letter probes on the SAE's inputs", ""),
}


@dataclass
class SAEBenchResult(Result):
    """SAEBench-style metrics of one SAE (see the module docstring): one table.

    Attributes:
        hook: the SAE's hook. d_sae: its width.
        metrics: metric -> value (``ABOUT`` says what each means).
        probing: one row per (dataset, k): ``dataset``, ``k``, ``accuracy``, ``latents``; ``k = 0`` is the
            full-width probe on the SAE's inputs.
        absorption: per letter: ``letter``, ``main``, ``probe_correct``, ``false_negatives``, ``absorbed``,
            ``rate``, ``absorbing``.
        tokens: held-out tokens of the core metrics.
    """

    hook: str
    d_sae: int
    metrics: dict[str, float]
    probing: list[dict[str, Any]]
    absorption: list[dict[str, Any]]
    tokens: int

    @property
    def title(self) -> str:
        return f"SAE bench at {self.hook} ({self.d_sae} latents)"

    def rows(self) -> list[dict[str, Any]]:
        """``metric``, ``value``, ``meaning`` and ``better`` rows: core metrics, sparse probing, absorption."""
        rows = []
        for k, v in self.metrics.items():
            meaning, better = ABOUT.get(k, (k, ""))
            rows.append({"metric": k, "value": float(v), "meaning": meaning, "better": better})
        for p in self.probing:
            name = f"probe_{p['dataset']}_" + ("full" if p["k"] == 0 else f"k{p['k']}")
            what = "all inputs of the SAE" if p["k"] == 0 else f"top-{p['k']} latents"
            rows.append({"metric": name, "value": float(p["accuracy"]),
                         "meaning": f"sparse probing accuracy on {p['dataset']}, {what}", "better": "higher"})
        return rows

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows())

    def summary(self) -> str:
        lines = [f"{self.title}, {self.tokens} held-out tokens"]
        lines += [f"  {r['metric']:<28} {r['value']:>9.4f}  {r['meaning']}" for r in self.rows()]
        return "\n".join(lines)

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        fig = go.Figure()
        for ds in sorted({p["dataset"] for p in self.probing}):
            ps = sorted((p for p in self.probing if p["dataset"] == ds and p["k"] > 0), key=lambda p: p["k"])
            fig.add_trace(go.Scatter(x=[p["k"] for p in ps], y=[p["accuracy"] for p in ps], mode="lines+markers",
                                     name=ds))
            full = [p["accuracy"] for p in self.probing if p["dataset"] == ds and p["k"] == 0]
            if full:
                fig.add_hline(y=full[0], line_dash="dot", annotation_text=f"{ds}: all inputs")
        fig.update_layout(title="Sparse probing: test accuracy against the number of latents", xaxis_type="log",
                          xaxis_title="k latents", yaxis_title="accuracy", yaxis_range=[0.4, 1.02])
        return fig


def probe_dataset(model: HookedModel, sae: torch.nn.Module, data: Labelled, ks: Sequence[int], seed: int = 0,
                  batch_size: int = 8) -> list[dict[str, Any]]:
    """Sparse probing rows of one labelled set: the full-width probe (``k = 0``), then each ``k``."""
    F, X = pooled_latents(model, sae, data.texts, batch_size=batch_size)
    y = data.y
    tr, te = stratified_split(y, 0.3, seed)
    full = fit_probe(X[tr], y[tr]).score(X[te], y[te])
    rows = [{"dataset": data.name, "k": 0, "accuracy": full, "latents": []}]
    for k in ks:
        p = sparse_probe(F[tr], y[tr], F[te], y[te], k)
        rows.append({"dataset": data.name, "k": k, "accuracy": p.accuracy, "latents": p.latents})
    return rows


def letter_absorption(model: HookedModel, sae: torch.nn.Module, per_letter: int = 40, seed: int = 0,
                      **kw: Any) -> Absorption:
    """:func:`~uncover.saebench.absorption.absorption` on the model's first-letter task."""
    ids, letters = first_letter_words(model.tokenizer, per_letter, seed)
    X = word_inputs(model, sae.cfg.hook_name, ids)
    with torch.no_grad():
        F = sae.encode(X)
    return absorption(X, F, sae.W_dec.detach(), torch.tensor(letters), seed=seed, **kw)


def sae_bench(model: HookedModel, sae: torch.nn.Module, tokens: torch.Tensor, datasets: Sequence[Labelled] = (),
              ks: Sequence[int] = (1, 2, 5), per_letter: int = 40, seed: int = 0,
              progress: Progress | None = None) -> SAEBenchResult:
    """SAEBench-style metrics of ``sae``: core metrics on ``tokens`` ``[n, pos]``, sparse probing, absorption.

    ``per_letter = 0`` skips absorption; an empty ``datasets`` skips sparse probing.

    >>> from uncover.sae.quick import quick_sae
    >>> from uncover.data.corpus import token_blocks
    >>> r = sae_bench(model, quick_sae(model), token_blocks(model, split="heldout")[:2], per_letter=0)  # doctest: +SKIP
    >>> round(r.metrics["l0"])  # doctest: +SKIP
    32
    """
    prog = progress or Progress(enabled=False)
    prog.message("core metrics: L0, dead and dense latents, loss recovered ...")
    ev = evaluate_sae(model, sae, tokens)
    metrics = {"l0": ev.l0, "dead": ev.dead, "dense": ev.dense, "fve": ev.fve, "ce_clean": ev.ce_clean,
               "ce_sae": ev.ce_sae, "ce_zero": ev.ce_zero, "loss_recovered": ev.ce_recovered}
    probing: list[dict[str, Any]] = []
    for data in prog.bar(list(datasets), desc="sparse probing"):
        probing += probe_dataset(model, sae, data, ks, seed)
    letters: list[dict[str, Any]] = []
    if per_letter:
        prog.message("first-letter absorption ...")
        ab = letter_absorption(model, sae, per_letter, seed)
        metrics.update(absorption=ab.rate, absorption_false_negatives=ab.false_negative_rate,
                       first_letter_probe=ab.probe_accuracy)
        letters = [{"letter": a.letter, "main": a.main, "probe_correct": a.probe_correct,
                    "false_negatives": a.false_negatives, "absorbed": a.absorbed, "rate": a.rate,
                    "absorbing": a.absorbing} for a in ab.letters]
    return SAEBenchResult(sae.cfg.hook_name, int(sae.cfg.d_sae), metrics, probing, letters, ev.tokens)
