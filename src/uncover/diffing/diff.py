"""What changed between a base model and a changed one, side by side (``uncover diff``).

:func:`model_diff` runs the same probes on both models (the changed one from
:class:`~uncover.diffing.changed.Change`: another model, or the base plus an edit, a weight change or
a steering vector, restored afterwards) and puts them side by side:

- predictions on probe prompts: each model's top tokens and probabilities, and ``KL(base || changed)``
  of the next-token distributions;
- causal traces (Meng et al. 2022, :func:`uncover.patching.causal_tracing.causal_trace`) of a subject
  prompt in each model, each tracing its own top answer: where each recalls it;
- the most changed features: crosscoder latents (a saved crosscoder, or one trained on the spot on
  corpus activations of both models; :mod:`uncover.diffing.analysis`) or SAE latents (an SAE read at
  its hook in both models on the probe prompts; latents ranked by the mean absolute change of their
  activation);
- the weight delta, one row per changed parameter (:meth:`~uncover.diffing.changed.Change.weight_delta`).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.errors import UsageError
from uncover.core.html import Section
from uncover.core.results import Result
from uncover.diffing.changed import Change, resolve_change

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel


@dataclass
class ModelDiff(Result):
    """A side-by-side diff of two models (see the module docstring).

    Attributes:
        base: the base model's name.
        changed: what the changed model is (one line).
        predictions: one row per probe prompt: ``prompt``, ``base``/``changed`` (top tokens with
            probabilities), ``top_changed`` (whether the top token differs), ``kl`` (``KL(base || changed)``).
        trace: the causal traces (``prompt``, ``tokens``, ``subject``, ``kind``, ``answers``, ``clean_prob``,
            ``grid_base``/``grid_changed`` ``[layer, pos]`` indirect effects), or ``None``.
        features: the most changed features, one dict each; ``feature_source`` says whose.
        feature_counts: latents per class for a crosscoder (empty for an SAE).
        weight_delta: one row per changed parameter (or steered hook).
    """

    base: str
    changed: str
    predictions: list[dict[str, Any]]
    trace: dict[str, Any] | None = None
    features: list[dict[str, Any]] = field(default_factory=list)
    feature_source: str = ""
    feature_counts: dict[str, int] = field(default_factory=dict)
    weight_delta: list[dict[str, Any]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"Diff of {self.base} and {self.changed}"

    def summary(self) -> str:
        flips = sum(r["top_changed"] for r in self.predictions)
        parts = [f"{self.title}: top prediction changed on {flips} of {len(self.predictions)} probes"]
        if self.weight_delta:
            n = sum(r["changed_entries"] for r in self.weight_delta)
            parts.append(f"{len(self.weight_delta)} parameter(s) changed ({n:,} entries)")
        if self.trace is not None:
            pb, pc = self.trace_peaks()
            parts.append(f"{self.trace['kind']} trace peaks at layer {pb} (base) and {pc} (changed)")
        if self.feature_counts:
            parts.append(", ".join(f"{v} {k}" for k, v in self.feature_counts.items() if v) + " latents")
        return "; ".join(parts)

    def trace_peaks(self) -> tuple[int, int]:
        """The layer of the largest indirect effect at the last subject token, base and changed."""
        last = self.trace["subject"][-1]  # type: ignore[index]
        return (int(self.trace["grid_base"][:, last].nan_to_num(-1e9).argmax()),  # type: ignore[index]
                int(self.trace["grid_changed"][:, last].nan_to_num(-1e9).argmax()))  # type: ignore[index]

    def cli_text(self) -> str:
        out = [self.summary(), "", "Predictions (base | changed):"]
        for r in self.predictions:
            mark = "*" if r["top_changed"] else " "
            out.append(f" {mark} {r['prompt']!r:40.40} {_fmt(r['base']):32} | {_fmt(r['changed']):32} KL {r['kl']:.3f}")
        if self.trace is not None:
            t, last = self.trace, self.trace["subject"][-1]
            out += ["", f"Causal trace ({t['kind']}) of {t['prompt']!r}, effect at the last subject token "
                    f"{t['tokens'][last]!r}: base answers {t['answers'][0]!r}, changed {t['answers'][1]!r}",
                    "  layer  base    changed"]
            for layer in range(t["grid_base"].shape[0]):
                out.append(f"  {layer:>5}  {float(t['grid_base'][layer, last]):+.3f}  "
                           f"{float(t['grid_changed'][layer, last]):+.3f}")
        if self.features:
            out += ["", f"Most changed features ({self.feature_source}):"]
            for r in self.features:
                out.append("  " + "  ".join(f"{k}={_short(v)}" for k, v in r.items()))
        if self.weight_delta:
            out += ["", "Weight delta:"]
            for r in self.weight_delta:
                rel = f"{r['relative']:.4f}" if r.get("relative") is not None else "-"
                out.append(f"  {r['parameter']}  {r['shape']}  |delta| {r['delta_norm']:.4g}  relative {rel}  "
                           f"rank {r['rank']}  entries {r['changed_entries']:,}")
        return "\n".join(out)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([{"prompt": r["prompt"], "base": _fmt(r["base"]), "changed": _fmt(r["changed"]),
                              "top_changed": r["top_changed"], "kl": r["kl"]} for r in self.predictions])

    def to_dict(self) -> dict[str, Any]:
        import json

        out = super().to_dict()
        trace = None
        if self.trace is not None:
            trace = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in self.trace.items()}
        out.update({"trace": trace, "features": json.loads(json.dumps(self.features, default=str)),
                    "feature_source": self.feature_source, "feature_counts": self.feature_counts,
                    "weight_delta": self.weight_delta})
        return out

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        fig = go.Figure()
        if self.trace is not None:
            last = self.trace["subject"][-1]
            for name, key in (("base", "grid_base"), ("changed", "grid_changed")):
                fig.add_scatter(y=self.trace[key][:, last].tolist(), name=f"{name} ({self.trace['kind']})")
            fig.update_layout(xaxis_title="layer", yaxis_title="indirect effect at the last subject token")
        else:
            fig.add_bar(x=[r["prompt"] for r in self.predictions], y=[r["kl"] for r in self.predictions])
            fig.update_layout(yaxis_title="KL(base || changed)")
        fig.update_layout(title=self.summary())
        return fig

    def html_sections(self) -> list[Section]:
        import pandas as pd

        out = super().html_sections()
        for title, rows in (("Most changed features (" + self.feature_source + ")", self.features),
                            ("Weight delta", self.weight_delta)):
            if rows:
                table = pd.DataFrame(rows).to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}")
                out.append(Section(html.escape(title), table))
        return out


def _fmt(top: list[list[Any]]) -> str:
    return ", ".join(f"{t!r} {p:.2f}" for t, p in top)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return " | ".join(map(str, v[:2]))
    return str(v)


# ---- the parts ----------------------------------------------------------------------------------
@torch.no_grad()
def _next_token(model: HookedModel, prompts: Sequence[str] | torch.Tensor) -> torch.Tensor:
    """``[n, d_vocab]`` log-probabilities of the next token after each prompt (its last real token)."""
    b = model.tokenize(prompts if isinstance(prompts, torch.Tensor) else list(prompts))
    logits = model(b)
    last = b.attention_mask.sum(-1) - 1
    return logits[torch.arange(len(last)), last].float().log_softmax(-1).cpu()


def _label(model: HookedModel, i: int) -> str:
    tok = model.tokenizer
    return tok.decode([i]) if tok is not None else str(i)


def predictions(base: HookedModel, change: Change, prompts: Sequence[str] | torch.Tensor, k: int = 3
                ) -> list[dict[str, Any]]:
    """Top-``k`` next tokens of both models on each prompt, and ``KL(base || changed)``.

    >>> rows = predictions(model, resolve_change(model, {}), ["The capital of France is"])
    >>> rows[0]["kl"], rows[0]["top_changed"]
    (0.0, False)
    """
    lp_a = _next_token(base, prompts)
    with change.applied(base) as m:
        lp_b = _next_token(m, prompts)
    texts = [str(p) for p in (prompts.tolist() if isinstance(prompts, torch.Tensor) else prompts)]
    rows = []
    for i, text in enumerate(texts):
        ta, tb = lp_a[i].topk(k), lp_b[i].topk(k)
        kl = float((lp_a[i].exp() * (lp_a[i] - lp_b[i])).sum().clamp(min=0))
        rows.append({"prompt": text,
                     "base": [[_label(base, int(t)), float(p.exp())] for p, t in zip(ta.values, ta.indices)],
                     "changed": [[_label(base, int(t)), float(p.exp())] for p, t in zip(tb.values, tb.indices)],
                     "top_changed": int(ta.indices[0]) != int(tb.indices[0]), "kl": kl})
    return rows


def traces(base: HookedModel, change: Change, prompt: str | torch.Tensor, subject: str | Sequence[int],
           kind: str = "mlp", samples: int = 3, seed: int = 0) -> dict[str, Any]:
    """Causal traces of ``prompt`` in both models, each for its own top answer (``[layer, pos]`` grids).

    ``prompt``: text, or token ids ``[1, pos]`` with ``subject`` as token positions.
    """
    from uncover.patching.causal_tracing import causal_trace

    a = causal_trace(base, prompt, subject, kind=kind, samples=samples, seed=seed)
    with change.applied(base) as m:
        b = causal_trace(m, prompt, subject, kind=kind, samples=samples, seed=seed)
    return {"prompt": prompt if isinstance(prompt, str) else str(prompt.tolist()), "tokens": a.str_tokens,
            "subject": a.subject, "kind": kind,
            "answers": [a.answer, b.answer], "clean_prob": [a.clean_prob, b.clean_prob],
            "grid_base": a.grids[kind].float(), "grid_changed": b.grids[kind].float()}


@torch.no_grad()
def sae_feature_changes(base: HookedModel, change: Change, sae: Any, prompts: Sequence[str] | torch.Tensor,
                        top: int = 10) -> list[dict[str, Any]]:
    """SAE latents whose activations change most between the models on ``prompts`` (mean ``|f_B - f_A|``)."""
    from uncover.hooks.harvest import hook_values

    hook = sae.cfg.hook_name

    def acts(m: HookedModel) -> torch.Tensor:
        return torch.cat([sae.encode(v[:, 1:]).flatten(0, 1) for v in hook_values(m, prompts, hook)])

    fa = acts(base)
    with change.applied(base) as m:
        fb = acts(m)
    delta = (fb - fa).abs().mean(0)
    idx = delta.topk(min(top, len(delta))).indices.tolist()
    return [{"latent": i, "mean_abs_change": float(delta[i]), "base_mean": float(fa[:, i].mean()),
             "changed_mean": float(fb[:, i].mean())} for i in idx if float(delta[i]) > 0]


def model_diff(base: HookedModel, changed: Any, prompts: Sequence[str] | torch.Tensor, *,
               subject_prompt: str | torch.Tensor | None = None, subject: str | Sequence[int] | None = None,
               trace_kind: str = "mlp", trace_samples: int = 3, features: str | Path | Any | None = None,
               crosscoder_steps: int = 0, hook: str | None = None, corpus_tokens: torch.Tensor | None = None,
               top: int = 8, steer_scale: float = 1.0, seed: int = 0, progress: Any = None) -> ModelDiff:
    """Diff ``base`` and ``changed`` side by side (see the module docstring).

    ``changed``: see :func:`~uncover.diffing.changed.resolve_change`. ``features``: an SAE or crosscoder
    (directory or object); or ``crosscoder_steps > 0`` to train a crosscoder at ``hook`` on
    ``corpus_tokens`` ``[blocks, pos]``.

    >>> d = model_diff(model, {}, ["The capital of France is"])
    >>> d.predictions[0]["top_changed"], d.weight_delta
    (False, [])
    """
    from uncover.diffing.analysis import analyse_crosscoder, block_context, train_crosscoder
    from uncover.diffing.crosscoder import Crosscoder, crosscoder_dir

    say = progress.message if progress is not None and hasattr(progress, "message") else (lambda _m: None)
    change = changed if isinstance(changed, Change) else resolve_change(base, changed, steer_scale)
    say(f"diffing against {change.describe()}")
    out = ModelDiff(base.name or "base", change.describe(), predictions(base, change, prompts, k=3))
    out.weight_delta = change.weight_delta(base)
    if subject_prompt is not None:
        if subject is None:
            raise UsageError("a causal trace needs the subject of the subject prompt")
        say("causal traces of the subject prompt ...")
        out.trace = traces(base, change, subject_prompt, subject, trace_kind, trace_samples, seed)
    cc = None
    if isinstance(features, Crosscoder):
        cc = features
    elif features is not None and not hasattr(features, "encode"):
        try:
            cc = Crosscoder.load(crosscoder_dir(features))
        except UsageError:
            from uncover.sae.sites import load_sae_dir

            features = load_sae_dir(features)
    if cc is None and crosscoder_steps > 0:
        if hook is None or corpus_tokens is None:
            raise UsageError("training a crosscoder needs a hook and corpus tokens")
        from uncover.sae.train import TrainConfig

        say(f"training a crosscoder at {hook} for {crosscoder_steps} steps ...")
        d = base.cfg.d_model
        tcfg = TrainConfig(steps=crosscoder_steps, lr=3e-3, sparsity_coeff=0.3, warmup_steps=20,
                           sparsity_warmup_steps=max(1, crosscoder_steps // 4), checkpoint_every=0, seed=seed)
        r, _, _ = train_crosscoder(base, change, hook, corpus_tokens, 2 * d, tcfg,
                                   batch_size=min(256, corpus_tokens.numel() // 2), seed=seed)
        cc = r.sae  # type: ignore[assignment]
    if cc is not None:
        from uncover.diffing.analysis import paired_activations

        texts = [*([subject_prompt] if isinstance(subject_prompt, str) else []),
                 *(prompts.tolist() if isinstance(prompts, torch.Tensor) else prompts)]
        pairs, ctx = [], []
        for t in texts:  # one prompt at a time: no padding enters the activations
            ids = torch.tensor([t]) if isinstance(t, list) else base.to_tokens(t)
            pairs.append(paired_activations(base, change, cc.cfg.hook_name, ids))
            c = block_context(ids, base)
            ctx += [(c, r) for r in range(ids.shape[1] - 1)]
        xa, xb = (torch.cat([p[j] for p in pairs]) for j in (0, 1))
        a = analyse_crosscoder(cc, xa, xb, lambda r: ctx[r][0](ctx[r][1]), top=top)
        out.features, out.feature_counts = a.latents, a.counts()
        out.feature_source = f"crosscoder at {cc.cfg.hook_name} (dead: silent on these prompts)"
    elif features is not None:
        out.features = sae_feature_changes(base, change, features, prompts, top=top)
        out.feature_source = f"SAE at {features.cfg.hook_name}"
    return out
