"""Shared vocabulary, errors, the result base class and what every result does on its own (HTML, save/load)."""
