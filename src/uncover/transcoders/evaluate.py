"""Evaluating transcoders: variance explained, sparsity, error-node size and CE loss with the MLPs replaced.

Per covered layer, on held-out tokens (open loop: each transcoder reads the real MLP input):
the fraction of the MLP output's variance explained ``1 - sum||y - y_hat||^2 / sum||y - mean y||^2``,
L0 (active features per token), the share of features never active, and the error-node size
``sqrt(sum||y - y_hat||^2 / sum||y||^2)`` (the relative norm of what an attribution graph's
error nodes carry). Closed loop, all covered MLPs at once: next-token cross-entropy with the
MLP outputs replaced by the transcoders' (:func:`replaced_mlps`; a CLT's layer reads the
features of earlier layers computed in the same pass), against the clean model and the MLPs
zero-ablated: ``CE recovered = (CE_zero - CE_replaced) / (CE_zero - CE_clean)``. The first
``skip_first`` positions are left alone and not scored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from uncover.core.results import Result
from uncover.hooks.interventions import Zero
from uncover.transcoders.base import mlp_in, mlp_out

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel
    from uncover.transcoders.sets import TranscoderSet


@dataclass
class TranscoderEval(Result):
    """Evaluation of a transcoder set on held-out tokens.

    Attributes:
        kind: ``per-layer`` or ``cross-layer``. layers: covered layers. tokens: tokens scored per layer.
        fve, l0, dead, error_norm: per covered layer (see the module docstring).
        ce_clean, ce_replaced, ce_zero: next-token cross-entropy (nats): clean, all covered MLPs replaced by the
            transcoders, all covered MLPs zero-ablated.
        ce_recovered: ``(ce_zero - ce_replaced) / (ce_zero - ce_clean)``.
    """

    kind: str
    layers: list[int]
    tokens: int
    fve: list[float]
    l0: list[float]
    dead: list[float]
    error_norm: list[float]
    ce_clean: float
    ce_replaced: float
    ce_zero: float
    ce_recovered: float

    @property
    def title(self) -> str:
        return f"Evaluation of {self.kind} transcoders ({len(self.layers)} layers)"

    def summary(self) -> str:
        n = max(len(self.layers), 1)
        return (f"{self.title} on {self.tokens} tokens: mean FVE {sum(self.fve) / n:.3f}, mean L0 "
                f"{sum(self.l0) / n:.1f}, mean error-node size {sum(self.error_norm) / n:.3f}; CE clean "
                f"{self.ce_clean:.3f}, MLPs replaced {self.ce_replaced:.3f}, zero-ablated {self.ce_zero:.3f} -> "
                f"CE recovered {self.ce_recovered:.3f}")

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame({"layer": self.layers, "fve": self.fve, "l0": self.l0, "dead": self.dead,
                             "error_norm": self.error_norm})

    def plot(self) -> go.Figure:
        from plotly.subplots import make_subplots

        df = self.to_frame()
        fig = make_subplots(rows=1, cols=3, subplot_titles=("variance explained", "L0", "error-node size"))
        for j, col in enumerate(("fve", "l0", "error_norm"), 1):
            fig.add_bar(x=df["layer"], y=df[col], row=1, col=j, showlegend=False)
        fig.update_layout(title=self.summary())
        return fig


@contextlib.contextmanager
def replaced_mlps(model: HookedModel, tset: TranscoderSet, skip_first: int = 0) -> Iterator[HookedModel]:
    """Within the block, each covered MLP's output is the transcoders' prediction from the MLP inputs of this pass.

    Positions before ``skip_first`` keep the real MLP output.

    >>> from uncover.transcoders import TranscoderSet, Transcoder, TranscoderConfig
    >>> ts = TranscoderSet({1: Transcoder(TranscoderConfig(d_in=576, d_sae=8, d_out=576, k=2,
    ...                                                    hook_name="blocks.1.ln2.hook_normalized"))})
    >>> with replaced_mlps(model, ts):
    ...     logits = model("The Eiffel Tower is in")
    >>> logits.shape
    torch.Size([1, 6, 49152])
    """
    inputs: dict[int, torch.Tensor] = {}

    def read(layer: int) -> Any:
        def fn(v: torch.Tensor, hp: Any) -> None:
            inputs[layer] = v

        return fn

    def write(layer: int) -> Any:
        def fn(v: torch.Tensor, hp: Any) -> torch.Tensor:
            feats = {src: tset.encode(src, inputs[src]) for src, _ in tset.decoders_to(layer)}
            y = tset.b_dec(layer) + sum(feats[src] @ w for src, w in tset.decoders_to(layer))
            s = tset.W_skip(layer)
            if s is not None:
                y = y + inputs[layer].to(s.dtype) @ s.T
            y = y.to(v.dtype)
            if skip_first:
                y = torch.cat([v[:, :skip_first], y[:, skip_first:]], 1)
            return y

        return fn

    hooks = [(mlp_in(la), read(la)) for la in tset.layers] + [(mlp_out(la), write(la)) for la in tset.layers]
    with model.hooks(hooks):
        yield model


def _ce(logits: torch.Tensor, tokens: torch.Tensor, skip_first: int) -> tuple[float, int]:
    lg = logits[:, skip_first:-1].float()
    tgt = tokens[:, skip_first + 1:]
    return float(torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1),
                                                   reduction="sum")), tgt.numel()


@torch.no_grad()
def evaluate_transcoders(model: HookedModel, tset: TranscoderSet, tokens: torch.Tensor, batch_size: int = 8,
                         skip_first: int = 1) -> TranscoderEval:
    """Evaluate ``tset`` on token blocks ``[n, pos]`` (held-out text).

    >>> from uncover.transcoders import TranscoderSet, Transcoder, TranscoderConfig
    >>> ts = TranscoderSet({1: Transcoder(TranscoderConfig(d_in=576, d_sae=8, d_out=576, k=2))})
    >>> ev = evaluate_transcoders(model, ts, model.to_tokens(["The Eiffel Tower is in Paris, France."]))
    >>> ev.layers, ev.ce_replaced > ev.ce_clean
    ([1], True)
    """
    from uncover.transcoders.data import harvest_pairs

    layers = tset.layers
    x, y = harvest_pairs(model, layers, tokens, batch_size=batch_size, skip_first=skip_first)
    y_hat = tset.reconstruct({la: x[:, i] for i, la in enumerate(layers)})
    fve, l0, dead, err = [], [], [], []
    for i, la in enumerate(layers):
        yi = y[:, i].double()
        sse = float((y_hat[la].double() - yi).pow(2).sum())
        fve.append(1 - sse / float((yi - yi.mean(0)).pow(2).sum().clamp(min=1e-30)))
        err.append((sse / float(yi.pow(2).sum().clamp(min=1e-30))) ** 0.5)
        active = tset.encode(la, x[:, i]) > 0
        l0.append(float(active.sum(-1).float().mean()))
        dead.append(float((~active.any(0)).float().mean()))
    ce = {"clean": 0.0, "replaced": 0.0, "zero": 0.0}
    n_ce = 0
    for i in range(0, len(tokens), batch_size):
        tok = tokens[i : i + batch_size].to(model.device)
        c, m = _ce(model(tok), tok, skip_first)
        ce["clean"] += c
        n_ce += m
        with replaced_mlps(model, tset, skip_first):
            ce["replaced"] += _ce(model(tok), tok, skip_first)[0]
        zero = [Zero(mlp_out(la), positions=range(skip_first, tok.shape[1])) for la in layers]
        with model.intervene(zero if skip_first < tok.shape[1] else []):
            ce["zero"] += _ce(model(tok), tok, skip_first)[0]
    cc, cr, cz = (ce[k] / max(n_ce, 1) for k in ("clean", "replaced", "zero"))
    rec = (cz - cr) / (cz - cc) if cz != cc else float("nan")
    return TranscoderEval(tset.kind, layers, len(x), fve, l0, dead, err, cc, cr, cz, rec)
