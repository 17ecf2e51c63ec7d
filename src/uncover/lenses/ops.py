"""Operations of the lenses: ``lens`` (logit or tuned lens of a prompt) and ``train-lens``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uncover.core.config import Config, param
from uncover.core.errors import UsageError
from uncover.core.results import Result
from uncover.lenses.logit_lens import LensResult, logit_lens
from uncover.lenses.tuned_lens import TunedLens, tuned_lens
from uncover.lenses.tuned_lens_train import train_tuned_lens
from uncover.ops.registry import operation

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class LensConfig(Config):
    """Logit lens (or tuned lens) of one prompt."""

    prompt: str = param(help="Prompt text", positional=True, nonempty=True)
    targets: list[str] = param([], help="Token to track (repeatable; one token each)", flag="--target", unit="token",
                               nonempty=True)
    all_positions: bool = param(False, help="Read every position, not only the last")
    k: int = param(5, help="Top-k tokens per layer", ge=1)
    tuned: Path | None = param(None, help="Use a tuned lens saved by `uncover train-lens`", path="in")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        if self.k > model.cfg.d_vocab:
            raise UsageError(f"LensConfig: k (--k) must be at most the vocabulary size {model.cfg.d_vocab}, "
                             f"got {self.k}")
        if self.tuned is not None:  # a broken or mismatched lens file is refused before the model runs
            TunedLens.load(self.tuned, model)


@operation("lens", LensConfig, LensResult,
           example={"prompt": "The Eiffel Tower is in the city of", "targets": [" Paris"]})
def lens(model: HookedModel, cfg: LensConfig, progress: Progress) -> LensResult:
    """Logit lens (or tuned lens): what the residual stream predicts after each layer."""
    positions = None if cfg.all_positions else -1
    targets = cfg.targets or None
    if cfg.tuned is not None:
        return tuned_lens(model, cfg.prompt, TunedLens.load(cfg.tuned, model), positions=positions, targets=targets,
                          k=cfg.k)
    return logit_lens(model, cfg.prompt, positions=positions, targets=targets, k=cfg.k)


@dataclass(frozen=True)
class TrainLensConfig(Config):
    """Train a tuned lens on the embedded corpus."""

    out: Path = param(Path("tuned-lens.safetensors"), help="Where to save the lens", path="out")
    steps: int = param(30, help="KL refinement steps after the least-squares fit", ge=0)


@dataclass
class TunedLensTraining(Result):
    """A trained tuned lens, saved.

    Attributes:
        path: where the lens was saved (safetensors).
        info: training settings and the mean KL to the final output before and after training.
    """

    path: str
    info: dict

    @property
    def title(self) -> str:
        return "Tuned lens training"

    def summary(self) -> str:
        return (f"tuned lens saved to {self.path}: mean KL to the final output {self.info.get('kl_before', 0):.3f}"
                f" -> {self.info.get('kl_after', 0):.3f} nats")

    def cli_text(self) -> str:
        return self.path

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{"path": self.path, "kl_before": self.info.get("kl_before"),
                              "kl_after": self.info.get("kl_after"), "tokens": self.info.get("tokens")}])

    def plot(self):
        import plotly.graph_objects as go

        fig = go.Figure(go.Bar(x=["before", "after"], y=[self.info.get("kl_before"), self.info.get("kl_after")]))
        fig.update_layout(title=self.title, yaxis_title="mean KL to the final output (nats)")
        return fig


@operation("train-lens", TrainLensConfig, TunedLensTraining, long=True, rtol=1e-3, atol=1e-4,
           example={"out": "tuned-lens.safetensors", "steps": 2})
def train_lens(model: HookedModel, cfg: TrainLensConfig, progress: Progress) -> TunedLensTraining:
    """Train a tuned lens on the embedded corpus and save it as safetensors."""
    lens_ = train_tuned_lens(model, steps=cfg.steps, progress=bool(progress))
    lens_.save(cfg.out)
    progress.message(f"saved the tuned lens to {cfg.out.resolve()}")
    return TunedLensTraining(str(cfg.out.resolve()), dict(lens_.info))
