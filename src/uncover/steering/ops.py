"""Operations of steering: ``read`` (RepE reading vectors per layer) and ``steer`` (generate with and without).

``read`` collects ``hook_resid_pre`` of contrast pairs (a built-in name or a file, see
:func:`uncover.data.labelled.load_pairs`) and can save the LAT vectors; ``steer`` builds an
ActAdd, CAA or directional-ablation steering (or loads a saved vector) and shows greedy
continuations side by side (:func:`uncover.steering.side_by_side.side_by_side`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from uncover.core.config import SCALE_MAX, SEED_MAX, Config, param
from uncover.core.errors import UsageError
from uncover.data.activations import collect, resid_hooks
from uncover.data.labelled import DATA_HELP, check_dataset, load_pairs
from uncover.ops.registry import operation
from uncover.probing.layer_spec import DatasetLayers
from uncover.steering.methods import CAA, DirectionalAblation, actadd, mean_difference
from uncover.steering.reading import ReadingResult, reading_vectors
from uncover.steering.side_by_side import SteerResult, side_by_side
from uncover.steering.vectors import SteeringVector

if TYPE_CHECKING:
    from uncover.core.progress import Progress
    from uncover.hooks.hooked import HookedModel

READ_DEFAULT_LAYERS = "1:"
"""``read`` skips layer 0 by default: its ``hook_resid_pre`` at the last token is that token's embedding, the
same for both texts of a pair that end alike, so no direction can be read there."""


def _save_vector(vec: SteeringVector, path: Path, progress: Progress) -> None:
    """GGUF control vector for a ``.gguf`` name, else safetensors (any other name)."""
    vec.to_gguf(path) if path.suffix.lower() == ".gguf" else vec.save(path)
    progress.message(f"wrote {path.resolve()}")


@dataclass(frozen=True)
class ReadConfig(DatasetLayers):
    """RepE reading vectors (LAT and difference-in-means) per layer."""

    default_layers = READ_DEFAULT_LAYERS

    data: str = param("honesty", help=f"Contrast pairs: {DATA_HELP} (positive,negative)", nonempty=True)
    layers: list[int] | str | None = param(None, help="Layers: 0,4,8 or start:stop:step (default all but layer 0, "
                                                      "where both texts of a pair look alike)")
    save: Path | None = param(None, help="Save the LAT reading vectors (.safetensors or .gguf)", path="out")
    seed: int = param(0, help="Seed of the train/test split and of LAT's sign flips", ge=0, le=SEED_MAX)


@operation("read", ReadConfig, ReadingResult, example={"data": "sentiment", "layers": [3, 6]})
def read(model: HookedModel, cfg: ReadConfig, progress: Progress) -> ReadingResult:
    """RepE reading vectors (LAT and difference-in-means) and their held-out reading accuracy per layer."""
    pairs = load_pairs(cfg.data, model).check()
    hooks = resid_hooks(model, cfg.layer_list(model), "hook_resid_pre")
    pos = collect(model, pairs.positive, hooks, progress=bool(progress))
    neg = collect(model, pairs.negative, hooks, progress=bool(progress))
    result = reading_vectors(pos, neg, groups=pairs.groups, seed=cfg.seed, dataset=pairs.name)
    if cfg.save is not None:
        vec = result.vector("pca")
        vec.model = model.name
        _save_vector(vec, cfg.save, progress)
    return result


@dataclass(frozen=True)
class SteerConfig(Config):
    """Generate with and without steering, side by side."""

    prompts: list[str] = param(help="Prompts to continue", positional=True, nonempty=True, min_items=1)
    method: Literal["actadd", "caa", "ablate"] = param(
        "actadd", help="actadd (one prompt pair), caa (mean difference of pairs) or ablate (project it out)")
    positive: str = param("Love", help="ActAdd: the positive prompt", nonempty=True, unit="tokens")
    negative: str = param("Hate", help="ActAdd: the negative prompt", nonempty=True, unit="tokens")
    pairs: str = param("sentiment", help=f"CAA/ablate: contrast pairs: {DATA_HELP}", nonempty=True)
    layer: int = param(6, help="Layer to steer at (not with --vector: a vector has its own layers)", ge=0)
    scale: float = param(5.0, help="ActAdd coefficient / CAA multiplier (negative: the other way)",
                         ge=-SCALE_MAX, le=SCALE_MAX)
    vector: Path | None = param(None, help="Steer with a saved vector (.safetensors or .gguf) as CAA, at its own "
                                           "layers (instead of --method)", path="in")
    save: Path | None = param(None, help="Save the CAA/ablate vector (.safetensors or .gguf)", path="out")
    max_new_tokens: int = param(20, help="Tokens to generate", ge=1, unit="context")
    neutral_blocks: int = param(2, help="Blocks of 64 held-out corpus tokens on which KL(unsteered || steered) is "
                                        "measured (0: no KL)", ge=0, le=64)

    def validate(self) -> None:
        try:
            check_dataset(self.pairs, what="pairs (--pairs)")
        except UsageError as e:
            raise UsageError(f"SteerConfig: {e}") from None
        if self.vector is not None and self.method == "ablate":
            raise UsageError("SteerConfig: vector (--vector) steers as CAA; --method ablate takes its direction "
                             "from --pairs")
        if self.save is not None and (self.vector is not None or self.method == "actadd"):
            raise UsageError("SteerConfig: save (--save) writes the vector of --method caa or ablate; "
                             "ActAdd and --vector make none to save")

    def check_model(self, model: HookedModel) -> None:
        super().check_model(model)
        if self.vector is not None:
            SteeringVector.load(self.vector).check(model)
        elif self.layer >= model.cfg.n_layers:
            raise UsageError(f"SteerConfig: layer (--layer) {self.layer} is out of range; this model has layers "
                             f"0..{model.cfg.n_layers - 1}")


@operation("steer", SteerConfig, SteerResult,
           example={"prompts": ["I hate you because"], "layer": 6, "scale": 5.0, "max_new_tokens": 4})
def steer(model: HookedModel, cfg: SteerConfig, progress: Progress) -> SteerResult:
    """Generate with and without steering; the model is restored after the call."""
    if cfg.vector is not None:
        vec = SteeringVector.load(cfg.vector).check(model)
        st, layers, method = CAA(vec, cfg.scale), vec.layers, f"vector {cfg.vector.name}"
    elif cfg.method == "actadd":
        st, layers, method = actadd(model, cfg.positive, cfg.negative, layer=cfg.layer, coeff=cfg.scale), \
            [cfg.layer], cfg.method
    else:
        ps = load_pairs(cfg.pairs, model).check()
        vec = mean_difference(model, ps.positive, ps.negative, [cfg.layer])
        st = CAA(vec, cfg.scale) if cfg.method == "caa" else DirectionalAblation(vec.vectors[cfg.layer])
        layers, method = [cfg.layer], cfg.method
        if cfg.save is not None:
            _save_vector(vec, cfg.save, progress)
    neutral = None
    if cfg.neutral_blocks:
        from uncover.data.corpus import token_blocks

        neutral = token_blocks(model, block_len=_neutral_len(model), split="heldout")[:cfg.neutral_blocks]
    return side_by_side(model, cfg.prompts, st, method=method, layers=layers, max_new_tokens=cfg.max_new_tokens,
                        neutral=neutral)


def _neutral_len(model: HookedModel) -> int:
    """64 tokens, or the model's context when shorter."""
    limit = getattr(model.model.config, "max_position_embeddings", None)
    return min(64, int(limit)) if limit else 64
