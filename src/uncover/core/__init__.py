"""Shared vocabulary, errors and result base class."""
