"""Hooked model, activation cache and interventions."""
