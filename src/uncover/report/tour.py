"""The tour: one HTML report of the whole product on a model, built from operations.

Each section is a function ``(model, step) -> list[Result]`` in :data:`SECTIONS`, where ``step(name,
**config)`` runs an operation through the registry (validated config, provenance on every
result). Results are cached per model fingerprint and config under ``$UNCOVER_CACHE/tour``, so
a second tour of the same model only renders. Sections that change weights (an edit, a pruning)
revert them, and the tour checks that the model's fingerprint is unchanged at the end.
"""

from __future__ import annotations

import hashlib
import html
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uncover.core.errors import UncoverError
from uncover.core.html import Section, render_page
from uncover.core.persist import atomic_write, load_result
from uncover.core.results import Result
from uncover.ops.provenance import weights_fingerprint
from uncover.ops.registry import get_operation

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

FACT_PROMPT = "The Eiffel Tower is in the city of"
FACT_ANSWER, FACT_WRONG = " Paris", " London"
FACT_SUBJECT = "The Eiffel Tower"
IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"
IOI_ANSWER, IOI_WRONG = " Mary", " John"
IOI_CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
IOI_ABC = "When Alice and Bob went to the store, Sam gave a drink to"
IOI_PAIR = {"clean": IOI_PROMPT, "corrupt": IOI_CORRUPT, "answer": IOI_ANSWER, "wrong": IOI_WRONG}

Step = Callable[..., Result]


def lens_section(model: HookedModel, step: Step) -> list[Result]:
    """Logit lens on the factual and the IOI prompt, all positions."""
    return [step("lens", prompt=FACT_PROMPT, all_positions=True, targets=[FACT_ANSWER]),
            step("lens", prompt=IOI_PROMPT, all_positions=True, targets=[IOI_ANSWER, IOI_WRONG])]


def dla_section(model: HookedModel, step: Step) -> list[Result]:
    """Direct logit attribution of the factual and the IOI answer."""
    return [step("dla", prompt=FACT_PROMPT, answer=FACT_ANSWER, wrong=FACT_WRONG),
            step("dla", prompt=IOI_PROMPT, answer=IOI_ANSWER, wrong=IOI_WRONG)]


def patching_section(model: HookedModel, step: Step) -> list[Result]:
    """Residual-stream activation patching of the IOI pair (S2 name swapped)."""
    return [step("patch", **IOI_PAIR)]


def path_section(model: HookedModel, step: Step) -> list[Result]:
    """Path patching of every head into the logits, against the ABC corruption (Wang et al.)."""
    return [step("path", **{**IOI_PAIR, "corrupt": IOI_ABC})]


def tracing_section(model: HookedModel, step: Step) -> list[Result]:
    """Causal tracing of the factual prompt (hidden states, MLP and attention windows)."""
    return [step("trace", prompt=FACT_PROMPT, subject=FACT_SUBJECT, answer=FACT_ANSWER, kind="all", samples=2)]


def attribution_section(model: HookedModel, step: Step) -> list[Result]:
    """Attribution patching on the IOI pair; per head next to exact patching, with their correlation.

    The residual-stream grid's exact counterpart is the activation-patching section's (same pair,
    same sites), so it is not recomputed here: the tour's first run stays short."""
    return [step("attribute", **IOI_PAIR, hook="resid_pre", per="pos"),
            step("attribute", **IOI_PAIR, hook="z", per="head", compare=True)]


def heads_section(model: HookedModel, step: Step) -> list[Result]:
    """Induction: loss on repeated random tokens, head detectors, and the patterns of the top heads."""
    loss = step("heads", detect="loss", n=4)
    induction = step("heads", detect="induction", n=4)
    previous = step("heads", detect="previous", n=4)
    top = [_top_head(induction), _top_head(previous)]
    return [loss, induction, previous,
            step("heads", pattern="The cat sat on the mat. The cat sat on the", heads=[f"{a}.{b}" for a, b in top])]


def _top_head(r: Result) -> tuple[int, int]:
    inner = getattr(r, "result", r)  # the heads operation wraps the mode's own result
    layer, head, _ = inner.top(1)[0]
    return layer, head


def features_section(model: HookedModel, step: Step) -> list[Result]:
    """A small TopK SAE on the middle residual stream (trained on first use, then cached): its
    quality, and the dashboards of the features most active on the factual prompt's subject and last token."""
    from uncover.sae.attach import attach_sae
    from uncover.sae.quick import quick_sae

    sae = quick_sae(model, progress=False)
    with attach_sae(model, sae) as att:
        model(FACT_PROMPT)
    acts = att["hook_sae_acts_post"][0]  # [pos, d_sae]
    subject_end = len(model.to_str_tokens(FACT_SUBJECT)) - 1
    top: list[int] = []
    for pos in (subject_end, -1):  # the subject's last token, then the answer position
        top += [f for f in acts[pos].topk(4).indices.tolist() if f not in top][:2]
    return [step("sae eval", blocks=8), step("sae show", feature=top, blocks=48)]


def representations_section(model: HookedModel, step: Step) -> list[Result]:
    """Truth by layer (a linear probe against a control task), and steering with one ActAdd pair."""
    return [step("probe", data="truth", layers="0:30:3", folds=3),
            step("steer", prompts=["I think that the weather today is"], method="actadd", positive="Love",
                 negative="Hate", layer=6, scale=5.0, max_new_tokens=16)]


def editing_section(model: HookedModel, step: Step) -> list[Result]:
    """One ROME edit (the Eiffel Tower moves to Rome): predictions and generations before and after; reverted."""
    return [step("edit", prompt="{} is in the city of", subject=FACT_SUBJECT, target=" Rome", method="rome",
                 layer=1, check=["The Louvre is in the city of"], gen_tokens=12)]


def pruning_section(model: HookedModel, step: Step) -> list[Result]:
    """Wanda at 50 % sparsity: perplexity and measured sparsity before and after; reverted."""
    return [step("prune", method="wanda", sparsity=0.5, n_samples=8, eval_blocks=4)]


def dynamics_section(model: HookedModel, step: Step) -> list[Result]:
    """Grokking in miniature: a + b mod 31 with weight decay, memorization first, generalisation later."""
    return [step("grok", p=31, steps=600, train_frac=0.4, weight_decay=2.0, eval_every=50, threads=1)]


SECTIONS: list[tuple[str, Callable[[HookedModel, Step], list[Result]]]] = [
    ("Logit lens", lens_section),
    ("Direct logit attribution", dla_section),
    ("Activation patching", patching_section),
    ("Path patching", path_section),
    ("Causal tracing", tracing_section),
    ("Attribution patching", attribution_section),
    ("Attention heads", heads_section),
    ("SAE features", features_section),
    ("Representations", representations_section),
    ("Model editing", editing_section),
    ("Pruning", pruning_section),
    ("Training dynamics", dynamics_section),
]


def _stepper(model: HookedModel, fingerprint: str, cache: Path | None, stats: dict[str, int]) -> Step:
    """``step(op, **config)``: run an operation (or load its cached result), reverting weight changes."""
    def step(name: str, **config: Any) -> Result:
        op = get_operation(name)
        key = hashlib.sha256(json.dumps([name, config], sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = cache / f"{name.replace(' ', '-')}-{key}.safetensors" if cache is not None else None
        if path is not None and path.is_file():
            try:
                stats["cached"] += 1
                return load_result(path)
            except UncoverError:
                path.unlink(missing_ok=True)  # a damaged or outdated entry: run again
        stats["run"] += 1
        r = op(model if op.needs_model else None, **config)
        if op.changes_weights:
            r.revert()  # type: ignore[attr-defined]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            r.save(path)
        return r

    return step


def run_tour(model: HookedModel, out: str | Path = "uncover-tour.html", progress: bool = True,
             cache: bool = True) -> Path:
    """Run every tour section on ``model`` and write one self-contained HTML page; returns its path.

    ``cache``: reuse the results of an earlier tour of the same weights (``$UNCOVER_CACHE/tour``).

    >>> path = run_tour(model, "tour.html")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from uncover.models.load import cache_dir

    fingerprint = weights_fingerprint(model.model)
    stats = {"run": 0, "cached": 0}
    step = _stepper(model, fingerprint, cache_dir() / "tour" / fingerprint if cache else None, stats)
    sections: list[Section] = []
    t0 = time.perf_counter()
    for title, fn in tqdm(SECTIONS, desc="tour", disable=not progress):
        for r in fn(model, step):
            for s in r.html_sections():
                s.title = s.title if s.title.lower().startswith(title.lower()) else f"{title}: {s.title}"
                sections.append(s)
    if weights_fingerprint(model.model) != fingerprint:
        raise UncoverError("the tour left the model's weights changed; this is a bug, please report it")
    intro = (
        f"Model <b>{html.escape(model.name)}</b> ({model.cfg.family}, {model.cfg.n_layers} layers, "
        f"{model.cfg.n_heads} heads, d_model {model.cfg.d_model}, weights {fingerprint}); "
        f"{time.perf_counter() - t0:.1f} s on {html.escape(platform.machine())} / {model.device}; "
        f"{stats['run']} operations run, {stats['cached']} loaded from the cache."
    )
    path = Path(out)
    page = render_page("uncover tour", sections, intro)
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path.resolve()
