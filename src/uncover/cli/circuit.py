"""``uncover circuit``: discover a circuit (EAP, EAP-IG or ACDC) for a task and prune it."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from uncover.cli.common import MODEL_OPTION, emit, load_model
from uncover.core.errors import UncoverError

METHODS = ("eap", "eap-ig", "acdc")


def circuit(
    task: str = typer.Option("ioi", "--task", help="ioi, greater_than or facts (ignored with --clean ...)"),
    clean: str | None = typer.Option(None, "--clean", help="Clean prompt (instead of a task)"),
    corrupt: str | None = typer.Option(None, "--corrupt", help="Corrupt prompt (same token count)"),
    answer: str | None = typer.Option(None, "--answer", "-a", help="The clean answer token"),
    wrong: str | None = typer.Option(None, "--wrong", "-w", help="The competing token"),
    method: str = typer.Option("eap", "--method", help="eap, eap-ig or acdc"),
    edges: int | None = typer.Option(None, "--edges", "-n", help="Keep the N edges with the largest |score|"),
    threshold: float | None = typer.Option(None, "--threshold", help="Keep edges with |score| ≥ this"),
    n_prompts: int = typer.Option(8, "--prompts", help="Number of task pairs (the model must get them right)"),
    metric: str | None = typer.Option(None, "--metric",
                                      help="logit_diff, prob, logprob (EAP); kl or those (ACDC, default kl)"),
    steps: int = typer.Option(5, "--steps", help="EAP-IG interpolation steps"),
    tau: float = typer.Option(0.01, "--tau", help="ACDC threshold on the damage of one edge"),
    candidates: int = typer.Option(300, "--candidates",
                                   help="ACDC tries only the top-N EAP edges (0: every edge; slow on a CPU)"),
    ablation: str = typer.Option("corrupt", "--ablation", help="corrupt or mean (ACDC and --faithfulness)"),
    faith: bool = typer.Option(False, "--faithfulness", help="Also measure the pruned circuit's faithfulness"),
    save: Path | None = typer.Option(None, "--save", help="Write the circuit (all scores) as JSON here"),
    model: str | None = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout"),
    html: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML report here"),
) -> None:
    """Edge-level circuit discovery on a task's clean/corrupt pairs."""
    from uncover.circuits.acdc import acdc
    from uncover.circuits.eap import eap
    from uncover.circuits.faithfulness import faithfulness
    from uncover.circuits.prompts import Prompts
    from uncover.data.tasks import TASKS, facts_for

    if method not in METHODS:
        raise UncoverError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if task not in TASKS:
        raise UncoverError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if edges is not None and threshold is not None:
        raise UncoverError("give --edges or --threshold, not both")
    explicit = (("--clean", clean), ("--corrupt", corrupt), ("--answer", answer), ("--wrong", wrong))
    given = [n for n, v in explicit if v is not None]
    if given and len(given) < 4:
        raise UncoverError(f"missing {', '.join(n for n, v in explicit if v is None)} (or leave all four out "
                           "and use --task)")
    m = load_model(model)
    if given:
        prompts = Prompts.build(m, [clean], [corrupt], [answer], [wrong])
        task = "custom"
    else:
        t = facts_for(m) if task == "facts" else TASKS[task](max(2 * n_prompts, 16)).filter_correct(m)
        if not len(t):
            raise UncoverError(f"the model gets no {task} pair right")
        prompts = Prompts.from_task(m, t, n_prompts)
    print(f"uncover: {method} on {prompts.n} {task} pairs ...", file=sys.stderr, flush=True)
    if method == "acdc":
        cands = eap(m, prompts).top(candidates) if candidates else None
        c = acdc(m, prompts, tau=tau, metric=metric or "kl", ablation=ablation, candidates=cands)
    else:
        c = eap(m, prompts, method=method, metric=metric or "logit_diff", steps=steps)
    c.meta["task"] = task
    if save is not None:
        c.save(save)
        print(f"uncover: wrote {save.resolve()}", file=sys.stderr)
    if edges is not None:
        c = c.top(edges)
    elif threshold is not None:
        c = c.threshold(threshold)
    elif method != "acdc":
        c = c.top(200)
    if faith:
        c.meta["faithfulness"] = faithfulness(m, c, prompts, ablation=ablation,
                                              metric=None if c.metric != "kl" else "logit_diff")
        c.meta["ablation"] = ablation
    emit(c, as_json, html)
