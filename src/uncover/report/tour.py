"""The tour: one self-contained HTML report of the main techniques on a model.

Each section is a function ``(model) -> list[Result]`` in :data:`SECTIONS`; later
techniques add theirs. The default prompts are a factual recall prompt and an
indirect-object-identification (IOI) prompt.
"""

from __future__ import annotations

import html
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from uncover.attribution.dla import direct_logit_attribution
from uncover.core.results import Result
from uncover.lenses.logit_lens import logit_lens
from uncover.patching.activation import activation_patching
from uncover.patching.path import path_patching
from uncover.report.html import Section, render_page

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

FACT_PROMPT = "The Eiffel Tower is in the city of"
FACT_ANSWER, FACT_WRONG = " Paris", " London"
FACT_SUBJECT = "The Eiffel Tower"
IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"
IOI_ANSWER, IOI_WRONG = " Mary", " John"
IOI_CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
IOI_ABC = "When Alice and Bob went to the store, Sam gave a drink to"


def lens_section(model: HookedModel) -> list[Result]:
    """Logit lens on the factual and the IOI prompt, all positions."""
    return [
        logit_lens(model, FACT_PROMPT, positions=None, targets=[FACT_ANSWER]),
        logit_lens(model, IOI_PROMPT, positions=None, targets=[IOI_ANSWER, IOI_WRONG]),
    ]


def dla_section(model: HookedModel) -> list[Result]:
    """Direct logit attribution of the factual and the IOI answer."""
    return [
        direct_logit_attribution(model, FACT_PROMPT, FACT_ANSWER, FACT_WRONG),
        direct_logit_attribution(model, IOI_PROMPT, IOI_ANSWER, IOI_WRONG),
    ]


def patching_section(model: HookedModel) -> list[Result]:
    """Residual-stream activation patching of the IOI pair (S2 name swapped)."""
    return [activation_patching(model, IOI_PROMPT, IOI_CORRUPT, IOI_ANSWER, IOI_WRONG)]


def path_section(model: HookedModel) -> list[Result]:
    """Path patching of every head into the logits, against the ABC corruption (Wang et al.)."""
    return [path_patching(model, IOI_PROMPT, IOI_ABC, IOI_ANSWER, IOI_WRONG)]


def tracing_section(model: HookedModel) -> list[Result]:
    """Causal tracing of the factual prompt (hidden states, MLP and attention windows)."""
    from uncover.patching.causal_tracing import causal_trace

    return [causal_trace(model, FACT_PROMPT, FACT_SUBJECT, FACT_ANSWER, kind="all", samples=3)]


def attribution_section(model: HookedModel) -> list[Result]:
    """Attribution patching next to exact patching on the IOI pair, with their correlation."""
    from uncover.attribution.attribution_patching import compare_attribution

    return [compare_attribution(model, IOI_PROMPT, IOI_CORRUPT, IOI_ANSWER, IOI_WRONG,
                                sites=[("resid_pre", "pos"), ("z", "head")])]


def heads_section(model: HookedModel) -> list[Result]:
    """Induction: loss on repeated random tokens, head detectors, and the patterns of the top heads."""
    from uncover.heads.detectors import detect
    from uncover.heads.induction import induction_loss
    from uncover.heads.patterns import attention_patterns

    scores = detect(model, n=4)
    top = [scores["induction"].top(1)[0], scores["previous"].top(1)[0]]
    heads = [f"{t[0]}.{t[1]}" for t in top]
    return [induction_loss(model, n=4), scores["induction"], scores["previous"],
            attention_patterns(model, "The cat sat on the mat. The cat sat on the", heads)]


def features_section(model: HookedModel) -> list[Result]:
    """A small TopK SAE on the middle residual stream (trained on first use, then cached): its
    quality, and the dashboards of the features most active on the factual prompt's last token."""
    from uncover.data.corpus import token_blocks
    from uncover.sae.attach import attach_sae
    from uncover.sae.dashboard import feature_dashboard
    from uncover.sae.evaluate import evaluate_sae
    from uncover.sae.quick import quick_sae

    sae = quick_sae(model, progress=False)
    held = token_blocks(model, block_len=64, split="heldout")
    with attach_sae(model, sae) as att:
        model(FACT_PROMPT)
    acts = att["hook_sae_acts_post"][0]  # [pos, d_sae]
    subject_end = len(model.to_str_tokens(FACT_SUBJECT)) - 1
    top: list[int] = []
    for pos in (subject_end, -1):  # the subject's last token, then the answer position
        top += [f for f in acts[pos].topk(4).indices.tolist() if f not in top][:2]
    return [evaluate_sae(model, sae, held[:8]), feature_dashboard(model, sae, top, tokens=held[:48], k=6)]


SECTIONS: list[tuple[str, Callable[[HookedModel], list[Result]]]] = [
    ("Logit lens", lens_section),
    ("Direct logit attribution", dla_section),
    ("Activation patching", patching_section),
    ("Path patching", path_section),
    ("Causal tracing", tracing_section),
    ("Attribution patching", attribution_section),
    ("Attention heads", heads_section),
    ("SAE features", features_section),
]


def run_tour(model: HookedModel, out: str | Path = "uncover-tour.html", progress: bool = True) -> Path:
    """Run every tour section on ``model`` and write one self-contained HTML page; returns its path.

    >>> path = run_tour(model, "tour.html")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    sections: list[Section] = []
    t0 = time.perf_counter()
    for title, fn in tqdm(SECTIONS, desc="tour", disable=not progress):
        for r in fn(model):
            s = Section.from_result(r)
            cards = getattr(r, "feature_html", None)
            if cards is not None:  # feature dashboards: one card of highlighted contexts per feature
                s.body += "\n".join(cards(j) for j in range(len(r.features)))
            s.title = r.title if r.title.lower().startswith(title.lower()) else f"{title}: {r.title}"
            sections.append(s)
    intro = (
        f"Model <b>{html.escape(model.name)}</b> ({model.cfg.family}, {model.cfg.n_layers} layers, "
        f"{model.cfg.n_heads} heads, d_model {model.cfg.d_model}); {time.perf_counter() - t0:.1f} s on "
        f"{html.escape(platform.machine())} / {model.device}."
    )
    path = Path(out)
    path.write_text(render_page("uncover tour", sections, intro), encoding="utf-8")
    return path.resolve()
