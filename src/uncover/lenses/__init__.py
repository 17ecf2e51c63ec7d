"""Lenses: decode the residual stream at every layer (logit lens, tuned lens)."""
