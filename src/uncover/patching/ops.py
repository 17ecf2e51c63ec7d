"""Operations of patching: ``patch`` (activation patching), ``path`` (path patching) and ``trace`` (causal tracing).

Each is a config, one ``run`` and its result type (see :mod:`uncover.ops.registry`); the CLI
commands of the same names are generated from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from uncover.core.config import SEED_MAX, Config, param
from uncover.core.errors import UncoverError, UsageError
from uncover.core.progress import Progress
from uncover.ops.registry import operation
from uncover.patching.activation import PatchResult, activation_patching
from uncover.patching.causal_tracing import CausalTraceResult, causal_trace
from uncover.patching.pair_config import PairConfig
from uncover.patching.path import PathPatchResult, parse_receiver, path_patching
from uncover.patching.trace_facts import trace_facts

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel

Hook = Literal["resid_pre", "attn_out", "mlp_out", "z"]
Per = Literal["pos", "head", "head_pos"]
Metric = Literal["logit_diff", "prob", "logprob"]
Direction = Literal["denoise", "noise"]

IOI = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
IOI_ABC = "When Alice and Bob went to the store, Sam gave a drink to"
FACT = "The Eiffel Tower is in the city of"
FACT_CORRUPT = "The Colosseum is in the city of"


@dataclass(frozen=True)
class SitesConfig(PairConfig):
    """A pair plus the grid of sites to patch and how to score them (shared by ``patch`` and ``attribute``)."""

    hook: Hook = param("resid_pre", help="The activation to patch: per position (resid_pre, attn_out, mlp_out) "
                                         "or per head (z)")
    per: Per = param("pos", help="Sites: pos (with resid_pre, attn_out, mlp_out), head or head_pos (with z)")
    metric: Metric = param("logit_diff", help="Metric at the last position")
    direction: Direction = param("denoise", help="denoise: patch clean into corrupt; noise: corrupt into clean")

    def validate(self) -> None:
        super().validate()
        if (self.hook == "z") == (self.per == "pos"):
            valid = "head, head_pos" if self.hook == "z" else "pos"
            raise UsageError(f"{type(self).__name__}: per (--per) {self.per!r} does not fit hook {self.hook!r}; "
                             f"valid: {valid}")


@dataclass(frozen=True)
class PatchConfig(SitesConfig):
    """Activation patching of one clean/corrupt pair (explicit or the first of a task)."""


@operation("patch", PatchConfig, PatchResult,
           example={"clean": FACT, "corrupt": FACT_CORRUPT, "answer": " Paris", "wrong": " Rome"})
def patch(model: HookedModel, cfg: PatchConfig, progress: Progress) -> PatchResult:
    """Activation patching over (layer, position) or (layer, head) sites.

    >>> r = patch(model, PatchConfig(clean=IOI, corrupt=IOI_CORRUPT, answer=" Mary", wrong=" John", hook="z",
    ...                              per="head"), Progress.silent())
    >>> tuple(r.grid.shape)
    (30, 9)
    """
    clean, corrupt, answer, wrong = cfg.pair(model)
    return activation_patching(model, clean, corrupt, answer, wrong, hook=cfg.hook, per=cfg.per, metric=cfg.metric,
                               direction=cfg.direction)


def _receivers(text: str) -> list[str]:
    """``"logits"`` or comma-separated receivers -> a list (the CLI text of ``--receivers``)."""
    return [r.strip() for r in text.split(",") if r.strip()]


@dataclass(frozen=True)
class PathConfig(PairConfig):
    """Path patching of sender heads into receivers, for one pair or averaged over a task's pairs."""

    task: Literal["ioi", "greater_than"] | None = param(
        None, help="Average over pairs of a task (ioi with ABC corruption)")
    pairs: int = param(4, help="How many task pairs to average over", ge=1)
    receivers: list[str] = param(["logits"], help="'logits' or comma-separated heads' inputs, e.g. L23H3.q,L23H0.q",
                                 parse=_receivers, min_items=1, nonempty=True)
    receiver_positions: list[int] | None = param(None, flag="--positions",
                                                 help="Receiver positions, e.g. -1 (default all)", min_items=1)
    metric: Metric = param("logit_diff", help="Metric at the last position")
    freeze_mlps: bool = param(False, help="Also freeze MLPs (only direct paths)")

    def validate(self) -> None:
        super().validate()
        owner = type(self).__name__
        if "logits" in self.receivers:
            if len(self.receivers) > 1:
                raise UsageError(f"{owner}: receivers (--receivers) 'logits' goes alone, not with heads' inputs")
            return
        for r in self.receivers:
            try:
                parse_receiver(r)
            except UncoverError as e:
                raise UsageError(f"{owner}: receivers (--receivers): {e}") from None

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        c = model.cfg
        if self.receivers != ["logits"]:
            for r in self.receivers:
                layer, h, which = parse_receiver(r)
                n = c.n_heads if which == "q" else c.n_kv_heads
                if not (0 <= layer < c.n_layers and 0 <= h < n):
                    kind = "query" if which == "q" else "key-value"
                    raise UsageError(f"{type(self).__name__}: receiver {r} is out of range: layers "
                                     f"0..{c.n_layers - 1}, {kind} heads 0..{n - 1}")
        if self.explicit and self.receiver_positions:
            check_positions(self.receiver_positions, len(model.to_tokens(self.clean)[0]))


def check_positions(positions: list[int], n_tokens: int) -> None:
    """Refuse receiver positions outside a prompt of ``n_tokens`` tokens (negative ones count from the end).

    >>> check_positions([-1, 0], 3)
    >>> check_positions([3], 3)
    Traceback (most recent call last):
    ...
    uncover.core.errors.UsageError: receiver position (--positions) 3 is outside a prompt of 3 tokens; valid: -3..2
    """
    for p in positions:
        if not -n_tokens <= p < n_tokens:
            raise UsageError(f"receiver position (--positions) {p} is outside a prompt of {n_tokens} tokens; "
                             f"valid: {-n_tokens}..{n_tokens - 1}")


@operation("path", PathConfig, PathPatchResult,
           example={"clean": FACT, "corrupt": FACT_CORRUPT, "answer": " Paris", "wrong": " Rome",
                    "receivers": ["L9H6.q"], "receiver_positions": [-1]})
def path(model: HookedModel, cfg: PathConfig, progress: Progress) -> PathPatchResult:
    """Path patching: each sender head's effect through the chosen receivers only.

    >>> r = path(model, PathConfig(clean=IOI, corrupt=IOI_ABC, answer=" Mary", wrong=" John",
    ...                            receivers=["L3H0.q"]), Progress.silent())
    >>> r.receivers, tuple(r.grid.shape)
    (['L3H0.q'], (30, 9))
    """
    from uncover.data.tasks import right_pairs

    if cfg.explicit:
        cl, co, an, wr = cfg.clean, cfg.corrupt, cfg.answer, cfg.wrong
    else:
        n = max(8, 2 * cfg.pairs) if cfg.task == "ioi" else 2 * cfg.pairs
        chosen = right_pairs(model, cfg.task, n=n, ioi_corrupt="abc").pairs[:cfg.pairs]
        if cfg.receiver_positions:
            check_positions(cfg.receiver_positions, min(len(model.to_tokens(p.clean)[0]) for p in chosen))
        cl, co = [p.clean for p in chosen], [p.corrupt for p in chosen]
        an, wr = [p.answer for p in chosen], [p.wrong for p in chosen]
        progress.message(f"path patching over {len(chosen)} {cfg.task} pair(s)")
    receivers = "logits" if cfg.receivers == ["logits"] else cfg.receivers
    return path_patching(model, cl, co, an, wr, receivers=receivers, receiver_positions=cfg.receiver_positions,
                         metric=cfg.metric, freeze_mlps=cfg.freeze_mlps)


@dataclass(frozen=True)
class TraceConfig(Config):
    """Causal tracing of one factual prompt, or averaged over the facts the model gets right."""

    prompt: str | None = param(None, help="Factual prompt, e.g. 'The Eiffel Tower is in'", nonempty=True)
    subject: str | None = param(None, help="The subject span inside the prompt", nonempty=True)
    answer: str | None = param(None, help="Answer token (default: the model's top token)", unit="token")
    task: Literal["facts"] | None = param(None, help="Average over the facts the model gets right")
    n: int = param(4, help="With --task: number of facts to average", ge=1)
    kind: Literal["hidden", "mlp", "attn", "all"] = param("all", help="The restored state")
    window: int = param(10, help="Layers restored together for mlp and attn", ge=1)
    samples: int = param(10, help="Noise samples per prompt", ge=1)
    noise: float = param(3.0, help="Noise std as a multiple of the embeddings' std at hook_embed", gt=0)
    seed: int = param(0, help="Noise seed", ge=0, le=SEED_MAX)

    def validate(self) -> None:
        super().validate()
        if self.task is not None:
            given = [o for o, v in (("--prompt", self.prompt), ("--subject", self.subject), ("--answer", self.answer))
                     if v is not None]
            if given:
                raise UsageError(f"TraceConfig: give either --task or --prompt/--subject, not both (got {given[0]})")
            return
        if self.prompt is None or self.subject is None:
            raise UsageError("TraceConfig: missing --prompt and --subject (or give --task facts)")
        if self.subject not in self.prompt:
            raise UsageError(f"TraceConfig: subject (--subject) {self.subject!r} is not in the prompt {self.prompt!r}")
        if self.answer == "":
            raise UsageError("TraceConfig: answer (--answer) is empty; give one token (e.g. ' Paris') or leave it out")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        import torch

        from uncover.patching.causal_tracing import noise_scale

        # the noise must pass through the model's norms, which square it (in float32 at least), with room to spare
        dtype = getattr(model, "dtype", torch.float32)
        limit = min((torch.finfo(torch.float32).max / model.cfg.d_model) ** 0.5, torch.finfo(dtype).max) / 1e3
        sigma = noise_scale(model, self.noise)
        if sigma > limit:
            most = self.noise * limit / sigma
            raise UsageError(f"TraceConfig: noise (--noise) {self.noise:g} is a noise std of {sigma:.3g}, more than "
                             f"this model's {str(dtype).removeprefix('torch.')} activations carry through its norms; "
                             f"give at most {most:.3g} (the paper uses 3)")


@operation("trace", TraceConfig, CausalTraceResult,
           example={"prompt": FACT, "subject": "The Eiffel Tower", "answer": " Paris", "kind": "hidden",
                    "samples": 1})
def trace(model: HookedModel, cfg: TraceConfig, progress: Progress) -> CausalTraceResult:
    """Causal tracing: restore clean states under subject noise, per (layer, token).

    >>> r = trace(model, TraceConfig(prompt="The Eiffel Tower is in the city of", subject="The Eiffel Tower",
    ...                              kind="hidden", samples=2), Progress.silent())
    >>> r.answer, tuple(r.grids["hidden"].shape)
    (' Paris', (30, 9))
    """
    kw = {"kind": cfg.kind, "window": cfg.window, "samples": cfg.samples, "noise": cfg.noise, "seed": cfg.seed}
    if cfg.task is not None:
        return trace_facts(model, n=cfg.n, **kw)
    return causal_trace(model, cfg.prompt, cfg.subject, cfg.answer, **kw)
