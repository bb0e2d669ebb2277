from __future__ import annotations

from citysense.exceptions import CitysenseError


class IngestError(CitysenseError):
    """The ingest path failed."""


class UnknownProfileError(IngestError):
    """No device profile or codec has this name."""
