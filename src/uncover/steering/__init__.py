"""Steering: reading vectors (RepE), ActAdd, CAA, ITI, directional ablation, sweeps, side-by-side
generations, vector files."""

from uncover.steering.iti import ITI, fit_iti
from uncover.steering.methods import (
    CAA,
    ActAdd,
    Control,
    DirectionalAblation,
    Steering,
    actadd,
    caa,
    generate,
    mean_difference,
    steering,
)
from uncover.steering.reading import ReadingResult, lat_direction, mean_direction, reading_vectors
from uncover.steering.side_by_side import SteerResult, side_by_side
from uncover.steering.sweep import SweepResult, lexicon_sentiment, sweep
from uncover.steering.vectors import SteeringVector

__all__ = ["CAA", "ITI", "ActAdd", "Control", "DirectionalAblation", "ReadingResult", "SteerResult", "Steering",
           "SteeringVector", "SweepResult", "actadd", "caa", "fit_iti", "generate", "lat_direction",
           "lexicon_sentiment", "mean_difference", "mean_direction", "reading_vectors", "side_by_side", "steering",
           "sweep"]
