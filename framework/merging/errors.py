"""The one error type of framework.merging."""

from __future__ import annotations


class MergeError(ValueError):
    """The models cannot be merged as asked; the message names the cause and the fix."""
