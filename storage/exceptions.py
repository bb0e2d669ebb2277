from __future__ import annotations

from citysense.exceptions import CitysenseError


class StorageError(CitysenseError):
    """The database refused or failed an operation."""


class StorageUnavailableError(StorageError):
    """The database cannot be reached or lost the connection; retry later."""

    retriable = True


class SchemaTooOldError(StorageError):
    """The database schema is older than this code needs; run ``citysense db migrate``."""


class StorageRejectedError(StorageError):
    """The database refused these records for what they contain (not for its own state).

    Retrying the same records can never succeed: the writer isolates the offending
    record and dead-letters it instead of stalling its partition.
    """
