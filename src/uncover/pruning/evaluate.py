"""Evaluating a pruned model: held-out perplexity, fact accuracy, measured sparsity, saving.

Perplexity is measured on token blocks of the embedded corpus's *held-out* split (documents
never used for calibration, which draws from the train split; see :mod:`uncover.data.corpus`).
Fact accuracy is the top-1 accuracy of the first answer token on the built-in fact set
(:func:`uncover.data.tasks.facts`). The pruned model saves as a transformers-loadable
safetensors directory with its tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UncoverError
from uncover.core.results import Result
from uncover.pruning.base import Pruning, linear_sites, measured_rows

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.data.tasks import Task
    from uncover.hooks.hooked import HookedModel


def heldout_tokens(model: HookedModel, n_blocks: int = 16, seq_len: int = 128) -> torch.Tensor:
    """The first ``n_blocks`` held-out token blocks ``[n_blocks, seq_len]`` of the embedded corpus.

    >>> heldout_tokens(model, 8).shape
    torch.Size([8, 128])
    """
    from uncover.data.corpus import token_blocks

    blocks = token_blocks(model, block_len=seq_len, split="heldout")
    if n_blocks < 1 or n_blocks > len(blocks):
        raise UncoverError(f"n_blocks must be in [1, {len(blocks)}] for blocks of {seq_len} tokens, not {n_blocks}")
    return blocks[:n_blocks]


def perplexity(model: HookedModel, tokens: torch.Tensor | None = None, batch_size: int = 8) -> float:
    """``exp`` of the mean next-token loss over ``tokens`` ``[n, seq]`` (default: 16 held-out blocks).

    >>> perplexity(model, heldout_tokens(model, 2)) < 100
    True
    """
    tokens = heldout_tokens(model) if tokens is None else tokens
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in tokens.to(model.device).split(batch_size):
            logits = model.model(input_ids=chunk, attention_mask=torch.ones_like(chunk), use_cache=False).logits
            lp = torch.log_softmax(logits[:, :-1].float(), -1)
            nll = -lp.gather(-1, chunk[:, 1:].unsqueeze(-1)).squeeze(-1)
            total += float(nll.double().sum())
            count += nll.numel()
    return math.exp(total / count)


def fact_accuracy(model: HookedModel, task: Task | None = None) -> float:
    """Top-1 accuracy of the first answer token on the built-in fact set (all facts, unfiltered).

    >>> fact_accuracy(model) > 0.5
    True
    """
    from uncover.data.tasks import facts

    task = facts() if task is None else task
    batch = model.tokenize(task.clean)
    answers = torch.tensor([model.to_single_token(a) for a in task.answers])
    with torch.no_grad():
        logits = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    last = batch.attention_mask.sum(1) - 1
    top = logits[torch.arange(len(last)), last].argmax(-1).cpu()
    return float((top == answers).float().mean())


@dataclass
class PruneEval(Result):
    """Perplexity and fact accuracy of one or more (pruned) models, one row each."""

    rows: list[dict[str, Any]]
    """``{label, method, pattern, target, sparsity, perplexity, fact_accuracy}`` per evaluated model."""

    @property
    def title(self) -> str:
        return "Pruning evaluation: held-out perplexity and fact accuracy"

    def summary(self) -> str:
        lines = [f"{'model':<28} {'sparsity':>8} {'perplexity':>11} {'facts':>6}"]
        for r in self.rows:
            lines.append(f"{r['label']:<28} {r['sparsity']:>8.3f} {r['perplexity']:>11.2f} {r['fact_accuracy']:>6.2f}")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["label", "method", "pattern", "target", "sparsity", "perplexity",
                                               "fact_accuracy"])

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        f = self.to_frame()
        fig = go.Figure(go.Bar(x=f["label"], y=f["perplexity"], text=[f"{p:.1f}" for p in f["perplexity"]],
                               customdata=f["fact_accuracy"],
                               hovertemplate="%{x}<br>perplexity %{y:.2f}<br>fact accuracy %{customdata:.2f}"
                                             "<extra></extra>"))
        fig.update_layout(title=self.title, yaxis_type="log", yaxis_title="held-out perplexity (log)")
        return fig

    def __add__(self, other: PruneEval) -> PruneEval:
        return PruneEval(self.rows + other.rows)


def evaluate(
    model: HookedModel, pruning: Pruning | None = None, *, label: str | None = None,
    tokens: torch.Tensor | None = None, task: Task | None = None,
) -> PruneEval:
    """Perplexity (held-out corpus), fact accuracy and measured sparsity of ``model`` as it is now.

    >>> ev = evaluate(model, label="dense", tokens=heldout_tokens(model, 2))
    >>> type(ev).__name__
    'PruneEval'
    >>> p = wanda_prune(model, 0.5)  # doctest: +SKIP
    >>> ev + evaluate(model, p, tokens=heldout_tokens(model, 2))  # doctest: +SKIP
    """
    rows = measured_rows(linear_sites(model))
    sparsity = sum(r["zeros"] for r in rows) / sum(r["weights"] for r in rows)
    if label is None:
        label = "dense" if pruning is None else (
            f"{pruning.method} {pruning.pattern or f'{pruning.sparsity:.0%}'}")
    return PruneEval([{
        "label": label,
        "method": None if pruning is None else pruning.method,
        "pattern": None if pruning is None else pruning.pattern,
        "target": 0.0 if pruning is None else pruning.sparsity,
        "sparsity": sparsity,
        "perplexity": perplexity(model, tokens),
        "fact_accuracy": fact_accuracy(model, task),
    }])


@dataclass
class SparsityReport(Result):
    """Measured fraction of zero weights in every block linear of a model."""

    rows: list[dict[str, Any]]
    """``{layer, module, kind, weights, zeros, sparsity}`` per linear."""
    name: str = ""

    @property
    def title(self) -> str:
        return f"Sparsity per layer: {self.name}"

    def summary(self) -> str:
        n = sum(r["weights"] for r in self.rows)
        z = sum(r["zeros"] for r in self.rows)
        return f"{len(self.rows)} linear layers, {n:,} weights, {z / max(n, 1):.4f} zero"

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["layer", "module", "kind", "weights", "zeros", "sparsity"])

    def plot(self) -> go.Figure:
        from uncover.pruning.figures import sparsity_figure

        return sparsity_figure(self.to_frame(), self.title)


def sparsity_report(model: HookedModel) -> SparsityReport:
    """Measure the zeros of every block linear of ``model`` (pruned or not).

    >>> bool(sparsity_report(model).to_frame().sparsity.max() < 0.5)  # a dense model: few exact zeros
    True
    """
    return SparsityReport(measured_rows(linear_sites(model)), model.name)


def save_pretrained(model: HookedModel, out: str | Path) -> Path:
    """Save ``model`` (as it is now, e.g. pruned) and its tokenizer as a transformers safetensors directory.

    ``AutoModelForCausalLM.from_pretrained(out)`` loads it back with the same logits.

    >>> save_pretrained(model, "pruned-model")  # doctest: +SKIP
    PosixPath('pruned-model')
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UncoverError(f"{out} exists and is not a directory; give a new or existing directory")
    out.mkdir(parents=True, exist_ok=True)
    model.model.save_pretrained(out)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out)
    if not any(out.glob("*.safetensors")):
        raise UncoverError(f"{out}: transformers wrote no .safetensors file")
    return out


@dataclass
class PruneReport(Result):
    """A pruning together with its evaluation and where the model was saved (what ``uncover prune`` shows).

    ``to_frame()`` is the measured sparsity per module; ``to_dict()`` adds the evaluation rows.
    """

    pruning: Pruning
    """The applied pruning (measured sparsity per module; the model and undo buffer are not saved)."""
    evaluation: PruneEval | None = None
    """Perplexity and fact accuracy of the dense and the pruned model (``None``: not evaluated)."""
    saved_to: str | None = None
    """The directory the pruned model was saved in, if any."""

    @property
    def title(self) -> str:
        return self.pruning.title

    def revert(self) -> None:
        """Undo the pruning in the model, bit-exactly (:meth:`Pruning.revert`). Idempotent.

        >>> uncover.run("prune", model, method="magnitude", sparsity=0.3, eval_blocks=1).revert()  # doctest: +SKIP
        """
        self.pruning.revert()

    def summary(self) -> str:
        parts = [self.pruning.summary()]
        if self.evaluation is not None:
            parts.append(self.evaluation.summary())
        if self.saved_to:
            parts.append(f"saved to {self.saved_to} (AutoModelForCausalLM.from_pretrained loads it)")
        return "\n".join(parts)

    def to_frame(self) -> pd.DataFrame:
        return self.pruning.to_frame()

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update({"method": self.pruning.method, "target": self.pruning.sparsity, "pattern": self.pruning.pattern,
                  "sparsity": self.pruning.overall_sparsity(), "options": self.pruning.options,
                  "evaluation": [] if self.evaluation is None else self.evaluation.rows, "saved_to": self.saved_to})
        return d

    def plot(self) -> go.Figure:
        return self.pruning.plot()
