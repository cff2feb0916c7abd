"""One error hierarchy for the whole harness.

Every error says whether retrying can help: a UsageError is bad input found before anything
ran (fix the input), a TransientError may clear by itself (retry within bounds), a
PermanentError will not (stop, say where the node is). An error class that stands for one
report category (nodegate.core.categories) names it in ``category``; the ticket summary files a
failure of that class under it without reading its message.
"""
from __future__ import annotations


class NodegateError(Exception):
    """Root of every error nodegate raises on purpose."""

    category: str | None = None   # the report category of this kind of failure; None: sorted by its message

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message


class UsageError(NodegateError):
    """Bad input, found before anything changed: fix the input and run again."""


class TransientError(NodegateError):
    """May clear by itself: retrying within a bound can help."""


class PermanentError(NodegateError):
    """Will not clear by retrying: stop and state where things are."""
