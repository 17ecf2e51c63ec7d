"""Patching: activation patching, its metrics and the fast replay it uses."""
