"""The package version, in one place below every layer (``uncover.__version__``; provenance records it)."""

__version__ = "0.1.0"
