"""The root of every citysense exception.

Each package has its own ``exceptions.py`` whose classes derive from
:class:`CitysenseError`. ``retriable`` says, as data, whether trying the same
operation again may succeed (a broker that is restarting) or never will
(a malformed payload).
"""

from __future__ import annotations

from typing import ClassVar


class CitysenseError(Exception):
    """Base class of all citysense errors."""

    retriable: ClassVar[bool] = False


class ConfigurationError(CitysenseError):
    """Settings are missing or contradict each other."""


class IncorrectStateError(CitysenseError):
    """A component was used before ``start()`` or after ``stop()``."""
