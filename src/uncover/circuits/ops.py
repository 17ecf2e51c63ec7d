"""Operation of circuit discovery: ``circuit`` (EAP, EAP-IG or ACDC on a task's pairs, pruned).

A config, one ``run`` and its result type, :class:`~uncover.circuits.circuit.Circuit` (see
:mod:`uncover.ops.registry`); the CLI command ``circuit`` is generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from uncover.circuits.circuit import Circuit
from uncover.core.config import param
from uncover.core.errors import UsageError
from uncover.core.progress import Progress
from uncover.ops.registry import operation
from uncover.patching.pair_config import PairConfig, Task

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

IOI = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


@dataclass(frozen=True)
class CircuitConfig(PairConfig):
    """Edge-level circuit discovery on a task's clean/corrupt pairs (or one explicit pair)."""

    task: Task = param("ioi", help="The task whose pairs are used (ignored with --clean ...)")
    method: Literal["eap", "eap-ig", "acdc"] = param("eap", help="Discovery method")
    edges: int | None = param(None, help="Keep the N edges with the largest |score|", ge=1)
    threshold: float | None = param(None, help="Keep edges with |score| ≥ this", ge=0)
    n_prompts: int = param(8, flag="--prompts", help="Number of task pairs (the model must get them right)", ge=1)
    metric: Literal["logit_diff", "prob", "logprob", "kl"] | None = param(
        None, help="Metric (EAP: not kl, default logit_diff; ACDC: default kl)")
    steps: int = param(5, help="EAP-IG interpolation steps", ge=1)
    tau: float = param(0.01, help="ACDC threshold on the damage of one edge", ge=0)
    candidates: int = param(300, help="ACDC tries only the top-N EAP edges (0: every edge; slow on a CPU)", ge=0)
    ablation: Literal["corrupt", "mean"] = param("corrupt",
                                                 help="How removed edges are ablated (ACDC and --faithfulness)")
    faithfulness: bool = param(False, help="Also measure the pruned circuit's faithfulness")
    save: Path | None = param(None, help="Write the circuit (all scores) as JSON here", path="out")

    explicit_wins = True

    def validate(self) -> None:
        super().validate()
        if self.edges is not None and self.threshold is not None:
            raise UsageError("CircuitConfig: give --edges or --threshold, not both")
        if self.metric == "kl" and self.method != "acdc":
            raise UsageError(f"CircuitConfig: metric (--metric) 'kl' needs --method acdc; valid for {self.method}: "
                             "logit_diff, prob, logprob")


def _prompts(model: HookedModel, cfg: CircuitConfig):
    """The :class:`~uncover.circuits.prompts.Prompts` of the config and the name of their task."""
    from uncover.circuits.prompts import Prompts
    from uncover.data.tasks import right_pairs

    if cfg.explicit:
        return Prompts.build(model, [cfg.clean], [cfg.corrupt], [cfg.answer], [cfg.wrong]), "custom"
    t = right_pairs(model, cfg.task, n=max(2 * cfg.n_prompts, 16))
    return Prompts.from_task(model, t, cfg.n_prompts), cfg.task


def _nonempty(full: Circuit, kept: Circuit, what: str) -> Circuit:
    """``kept``, or a usage error naming the largest ``|score|`` when it holds no edge (an empty circuit)."""
    if kept.n_edges or not full.n_edges:
        return kept
    import torch

    top = float(torch.where(full.kept, full.scores.abs(), torch.zeros_like(full.scores)).max())
    raise UsageError(f"CircuitConfig: {what} no edge: the largest |score| is {top:.3g}; give a lower --threshold "
                     "(or --edges N)")


@operation("circuit", CircuitConfig, Circuit, rtol=1e-3, atol=1e-4,
           example={"clean": IOI, "corrupt": IOI_CORRUPT, "answer": " Mary", "wrong": " John", "edges": 20})
def circuit(model: HookedModel, cfg: CircuitConfig, progress: Progress) -> Circuit:
    """Edge-level circuit discovery on a task's clean/corrupt pairs.

    >>> c = circuit(model, CircuitConfig(clean=IOI, corrupt=IOI_CORRUPT, answer=" Mary", wrong=" John", edges=20),
    ...             Progress.silent())
    >>> c.n_edges, c.meta["task"]
    (20, 'custom')
    """
    from uncover.circuits.acdc import acdc
    from uncover.circuits.eap import eap
    from uncover.circuits.faithfulness import faithfulness

    prompts, task = _prompts(model, cfg)
    progress.message(f"{cfg.method} on {prompts.n} {task} pairs ...")
    if cfg.method == "acdc":
        cands = eap(model, prompts).top(cfg.candidates) if cfg.candidates else None
        c = acdc(model, prompts, tau=cfg.tau, metric=cfg.metric or "kl", ablation=cfg.ablation, candidates=cands)
        if not c.n_edges:  # like --edges 0, an empty circuit answers nothing
            raise UsageError(f"CircuitConfig: tau (--tau) {cfg.tau:g} removes every edge (each one's damage is below "
                             "it); give a lower --tau")
    else:
        c = eap(model, prompts, method=cfg.method, metric=cfg.metric or "logit_diff", steps=cfg.steps)
    c.meta["task"] = task
    if cfg.save is not None:
        c.save_json(cfg.save)
        progress.message(f"wrote {cfg.save.resolve()}")
    if cfg.edges is not None:
        c = c.top(cfg.edges)
    elif cfg.threshold is not None:
        c = _nonempty(c, c.threshold(cfg.threshold), f"threshold (--threshold) {cfg.threshold:g} keeps")
    elif cfg.method != "acdc":
        c = c.top(200)
    if cfg.faithfulness:
        c.meta["faithfulness"] = faithfulness(model, c, prompts, ablation=cfg.ablation,
                                              metric=None if c.metric != "kl" else "logit_diff")
        c.meta["ablation"] = cfg.ablation
    return c
