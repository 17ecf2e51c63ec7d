"""Probing: linear and MLP probes, control tasks, layer curves, causal checks, CCS."""

from uncover.probing.causal import CausalCheck, causal_check
from uncover.probing.ccs import CCSProbe, CCSResult, ccs_layers, fit_ccs
from uncover.probing.control import control_labels, cross_validate, folds_of
from uncover.probing.layer_spec import check_layer_spec, resolve_layers
from uncover.probing.layers import ProbeCurve, probe_layers
from uncover.probing.linear import Probe, fit_probe

__all__ = ["CCSProbe", "CCSResult", "CausalCheck", "Probe", "ProbeCurve", "causal_check", "ccs_layers",
           "check_layer_spec", "control_labels", "cross_validate", "fit_ccs", "fit_probe", "folds_of", "probe_layers",
           "resolve_layers"]
