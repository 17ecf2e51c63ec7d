"""Error types of uncover.

Every error says what was wrong and names the valid choices or a fix, so that the
CLI can print it as a one-line message and exit with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UncoverError(Exception):
    """Base class of every error uncover raises on purpose (bad input, unsupported model)."""


class UsageError(UncoverError, ValueError):
    """A value the user gave that is out of range, of the wrong kind, or inconsistent with another."""


class UnknownHookName(UncoverError, KeyError):
    """A hook name that this model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class UnsupportedModel(UncoverError):
    """An architecture or configuration option that no adapter understands."""


class ModelNotFound(UncoverError):
    """A model name that is neither a file, a directory nor a reachable hub id."""


class TokenError(UncoverError):
    """A string that should be exactly one token but is not."""


class CacheError(UncoverError):
    """A cached converted model that is missing or corrupted."""


def close_matches(word: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` entries of ``choices`` that look like ``word``.

    >>> close_matches("blocks.0.hook_resid_pr", ["blocks.0.hook_resid_pre", "hook_embed"])
    ['blocks.0.hook_resid_pre']
    """
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)


def did_you_mean(word: str, choices: Iterable[str], what: str = "name") -> str:
    """Format an error message for an unknown ``word``, naming close valid choices.

    >>> did_you_mean("hook_embd", ["hook_embed", "logits"], "hook name")
    "unknown hook name 'hook_embd'; did you mean: hook_embed"
    """
    choices = list(choices)
    matches = close_matches(word, choices)
    if matches:
        return f"unknown {what} {word!r}; did you mean: {', '.join(matches)}"
    shown = ", ".join(choices[:12]) + (" ..." if len(choices) > 12 else "")
    return f"unknown {what} {word!r}; valid choices: {shown}"
