"""Errors raised by the data pipelines. Each message names the bad value, the rule and the fix."""

from __future__ import annotations


class DataConfigError(ValueError):
    """A data spec or argument is invalid. Raised before any data is read."""


class StoreIntegrityError(DataConfigError):
    """A token store's files do not match its manifest (a truncated shard, a flipped byte, two builds at once)."""


class BadRecordError(ValueError):
    """An input record cannot be used. Carries where it is and why, for ``--on-bad-record``.

    ``reason`` is one of :data:`BAD_RECORD_REASONS`.
    """

    def __init__(self, path: str, line: int | None, reason: str, detail: str = ""):
        self.path, self.line, self.reason, self.detail = path, line, reason, detail
        where = f"{path}:{line}" if line is not None else path
        hint = (
            "fix the record, or pass --on-bad-record skip (Python: on_bad_record='skip') to skip it;"
            " skipped records are counted per reason in the store's manifest"
        )
        super().__init__(f"{where}: {reason}" + (f": {detail}" if detail else "") + f". To continue, {hint}.")


BAD_RECORD_REASONS = (
    "malformed_json",
    "missing_field",
    "not_utf8",
    "truncated_compressed_file",
    "empty_document",
    "not_text",
    "unreadable_file",
    "line_too_long",
)


def require(condition: bool, message: str) -> None:
    """Raise :class:`DataConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise DataConfigError(message)
