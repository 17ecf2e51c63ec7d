"""Attention-head analysis: detectors, QK/OV circuits, composition scores, pattern views."""
