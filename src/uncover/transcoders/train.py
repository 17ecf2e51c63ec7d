"""Training transcoders with the SAE trainer (:func:`uncover.sae.train.train_sae`): checkpoints, exact resume.

The trainer scales each batch so that ``E||row||^2 = d_in``, starts ``b_dec`` at the batch
mean, and at the end folds the scale back with ``fold_scale``. :class:`Trainable` adapts a
transcoder (per-layer or cross-layer) to that protocol: its ``b_dec`` is ``[b_in, b_out]``
for a row ``[x, y]``, an input-centring bias (started at the mean input) and the output bias
(started at the mean output). Outputs are multiplied by ``out_scale`` (the ratio of mean input
and output norms, so both halves of a row weigh alike). :meth:`Trainable.export` folds all of
it into the transcoder's own weights (``b_enc -= b_in @ W_enc``; ``b_dec += b_out - W_skip @
b_in``; the output side divided by ``out_scale``), exactly, so the saved transcoder is in
SAELens's form and reads raw activations.

:func:`train_transcoders` harvests MLP input/output pairs once
(:func:`~uncover.transcoders.data.harvest_pairs`) and trains one transcoder per layer (in
``out_dir/layer_{l}``, each a resumable run) or one CLT (``out_dir/clt``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from uncover.core.results import Result
from uncover.transcoders.base import Transcoder, TranscoderConfig, TranscoderError, mlp_in, mlp_out
from uncover.transcoders.clt import CLTConfig, CrossLayerTranscoder
from uncover.transcoders.sets import TranscoderSet

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from uncover.hooks.hooked import HookedModel
    from uncover.sae.train import TrainConfig


class _TrainerView:
    """The ``cfg`` the SAE trainer reads."""

    def __init__(self, inner: Transcoder | CrossLayerTranscoder, d_rows: int):
        self.inner_cfg = inner.cfg
        self.d_in = d_rows
        self.d_sae = inner.cfg.d_sae
        self.architecture = inner.cfg.architecture
        self.normalize_activations = "none"
        self.rescale_acts_by_decoder_norm = False

    def to_saelens(self) -> dict[str, Any]:
        return self.inner_cfg.to_saelens()


class Trainable(nn.Module):
    """A transcoder as the SAE trainer trains it (``b_dec`` = input-centring and output biases).

    >>> from uncover.sae.store import TensorSource
    >>> from uncover.sae.train import TrainConfig, train_sae
    >>> t = Trainable(Transcoder(TranscoderConfig(d_in=4, d_sae=16, d_out=4, k=4)))
    >>> x = torch.randn(256, 4)
    >>> r = train_sae(t, TensorSource(torch.cat([x, 2 * x], -1), 64), TrainConfig(steps=5), progress=False)
    >>> tuple(t.export()(x).shape)
    (256, 4)
    """

    def __init__(self, inner: Transcoder | CrossLayerTranscoder, out_scale: float = 1.0):
        super().__init__()
        self.inner, self.out_scale = inner, float(out_scale)
        c = inner.cfg
        n = c.n_layers if isinstance(c, CLTConfig) else 1
        self.n_in, self.n_out = n * c.d_in, n * c.d_out
        self.b_dec = nn.Parameter(torch.zeros(self.n_in + self.n_out))
        self.inner.b_dec.requires_grad_(False)
        self.cfg = _TrainerView(inner, self.n_in)

    def training_loss(self, xy: torch.Tensor, sparsity_coeff: float, dead: torch.Tensor | None,
                      aux_coeff: float) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        shifted = xy - self.b_dec
        loss, parts, f = self.inner.training_loss(shifted, sparsity_coeff, dead, aux_coeff)
        y = xy[:, self.n_in :]
        parts["fve_out"] = 1 - parts["mse"] / float((y - y.mean(0)).pow(2).sum(-1).mean().clamp(min=1e-12))
        return loss, parts, f

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        self.inner.fold_scale(scale)
        self.b_dec.div_(scale)

    @torch.no_grad()
    def export(self) -> Transcoder | CrossLayerTranscoder:
        """The trained transcoder with both biases folded into its own (a copy; reads raw activations)."""
        tc = copy.deepcopy(self.inner)
        tc.b_dec.requires_grad_(True)
        c = tc.cfg
        if isinstance(tc, CrossLayerTranscoder):
            b_in = self.b_dec[: self.n_in].view(c.n_layers, c.d_in)
            b_out = self.b_dec[self.n_in :].view(c.n_layers, c.d_out)
            tc.b_enc.sub_(torch.einsum("nd,ndf->nf", b_in, tc.W_enc))
            tc.b_dec.add_(b_out)
            if c.skip:
                tc.b_dec.sub_(torch.einsum("ned,nd->ne", tc.W_skip, b_in))
        else:
            b_in, b_out = self.b_dec[: self.n_in], self.b_dec[self.n_in :]
            tc.b_enc.sub_(b_in @ tc.W_enc)
            tc.b_dec.add_(b_out)
            if c.skip:
                tc.b_dec.sub_(tc.W_skip @ b_in)
        for w in [tc.b_dec, *(tc.W_dec if isinstance(tc, CrossLayerTranscoder) else [tc.W_dec])]:
            w.div_(self.out_scale)
        if c.skip:
            tc.W_skip.div_(self.out_scale)
        return tc

    def save(self, path: str | Path) -> Path:
        return self.export().save(path)


@dataclass
class TranscoderTraining(Result):
    """Trained transcoders and their training curves.

    Attributes:
        transcoders: the trained set (reads raw activations).
        metrics: one row per logged step (``layer`` is -1 for a CLT); ``fve_out`` is the fraction of the MLP
            output's variance explained on the training batch.
        out_dir: the run directory (``None`` if not saved).
        seconds: wall time of training (harvesting excluded).
    """

    transcoders: TranscoderSet
    metrics: list[dict[str, float]]
    out_dir: Path | None
    seconds: float

    @property
    def title(self) -> str:
        return f"{self.transcoders.kind} transcoders on layers {_span(self.transcoders.layers)}"

    def summary(self) -> str:
        last: dict[int, dict[str, float]] = {}
        for r in self.metrics:
            last[int(r["layer"])] = r
        if not last:
            return self.title
        fve = sum(r["fve_out"] for r in last.values()) / len(last)
        l0 = sum(r["l0"] for r in last.values()) / len(last)
        return (f"{self.title}: {self.transcoders.n_features} features; last step: mean output FVE {fve:.3f}, "
                f"L0 {l0:.1f}; {self.seconds:.1f} s" + (f"; saved in {self.out_dir}" if self.out_dir else ""))

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.metrics)

    def plot(self) -> go.Figure:
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure()
        for layer, part in df.groupby("layer"):
            fig.add_scatter(x=part["step"], y=part["fve_out"], name=f"layer {layer}" if layer >= 0 else "CLT")
        fig.update_layout(title=self.summary(), xaxis_title="step", yaxis_title="output variance explained")
        return fig


def _span(layers: Sequence[int]) -> str:
    ls = list(layers)
    if len(ls) > 2 and ls == list(range(ls[0], ls[-1] + 1)):
        return f"{ls[0]}-{ls[-1]}"
    return ",".join(map(str, ls))


def train_transcoders(model: HookedModel, layers: Sequence[int], tokens: torch.Tensor, train: TrainConfig, *,
                      cross_layer: bool = False, expansion: int = 4, activation: str = "topk", k: int = 32,
                      skip: bool = False, batch_size: int = 512, out_dir: str | Path | None = None,
                      resume: bool = False, progress: Any = False,
                      pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> TranscoderTraining:
    """Train per-layer transcoders (or one CLT) of ``model``'s MLPs at ``layers`` on token blocks ``[n, pos]``.

    ``d_sae = expansion * d_model`` features per layer; ``k`` active per layer and token (``topk``).
    ``pairs``: MLP inputs and outputs ``[n_tokens, len(layers), d_model]`` already harvested
    (:func:`~uncover.transcoders.data.harvest_pairs` of ``tokens``), to train several sets on one harvest.
    With ``out_dir``: ``layer_{l}/`` (or ``clt/``) run directories (checkpoints, metrics, the transcoder in
    ``sae/``, SAELens format), resumable with ``resume=True``.

    >>> from uncover.sae.train import TrainConfig
    >>> r = train_transcoders(model, [2], model.to_tokens(["The Eiffel Tower is in Paris, France."] * 8),
    ...                       TrainConfig(steps=3, log_every=1), expansion=1, k=8, batch_size=32)
    >>> r.transcoders.layers, r.transcoders.d_sae(2)
    ([2], 576)
    """
    from uncover.sae.train import train_sae
    from uncover.transcoders.data import harvest_pairs, pair_source

    layers = sorted(int(x) for x in layers)
    if pairs is None:
        x, y = harvest_pairs(model, layers, tokens, progress=progress)
    else:
        x, y = pairs
        if x.shape != y.shape or x.ndim != 3 or x.shape[1] != len(layers):
            raise TranscoderError(f"pairs must be two [n_tokens, {len(layers)}, d_model] tensors (one slice per "
                                  f"layer), got {tuple(x.shape)} and {tuple(y.shape)}")
    ratio = (x.norm(dim=-1).mean((0,)) / y.norm(dim=-1).mean((0,)).clamp(min=1e-12))  # [n_layers]
    d_in, d_out = x.shape[-1], y.shape[-1]
    out = Path(out_dir) if out_dir is not None else None
    name = model.name or ""
    t0 = time.perf_counter()
    rows: list[dict[str, float]] = []
    with torch.enable_grad():
        if cross_layer:
            clt = CrossLayerTranscoder(CLTConfig(layers=layers, d_in=d_in, d_layer=expansion * d_in, d_out=d_out,
                                                 activation=activation, k=k, skip=skip, model_name=name),
                                       seed=train.seed)
            r = float(ratio.mean())
            res = train_sae(Trainable(clt, r), pair_source(x, y * r, batch_size, train.seed), train,
                            out_dir=None if out is None else out / "clt", resume=resume, progress=bool(progress))
            rows += [{"layer": -1, **row} for row in res.metrics]
            tset = TranscoderSet(clt=res.sae.export())  # type: ignore[attr-defined]
        else:
            found = {}
            for i, layer in enumerate(layers):
                cfg = TranscoderConfig(d_in=d_in, d_sae=expansion * d_in, d_out=d_out, hook_name=mlp_in(layer),
                                       hook_name_out=mlp_out(layer), activation=activation, k=k, skip=skip,
                                       model_name=name)
                sub = None if out is None else out / f"layer_{layer}"
                again = resume and sub is not None and (sub / "checkpoint").exists()
                r = float(ratio[i])
                res = train_sae(Trainable(Transcoder(cfg, seed=train.seed + layer), r),
                                pair_source(x, y * r, batch_size, train.seed, index=i), train, out_dir=sub,
                                resume=again, progress=bool(progress))
                rows += [{"layer": layer, **row} for row in res.metrics]
                found[layer] = res.sae.export()  # type: ignore[attr-defined]
            tset = TranscoderSet(found)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        tset.save(out / "transcoders")
    return TranscoderTraining(tset, rows, out, time.perf_counter() - t0)
