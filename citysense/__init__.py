"""citysense: shared records, root exception and the `citysense` command."""

__version__ = "0.1.0"
