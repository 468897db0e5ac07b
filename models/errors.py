"""Exceptions raised by the ``models`` package.

Each one also subclasses the builtin it resembles, so callers that only know the builtin still
catch it; every message says what was wrong and what to do about it.
"""

from __future__ import annotations


class ModelError(Exception):
    """Root of every error raised by the ``models`` package."""


class UnknownArchitectureError(ModelError, KeyError):
    """An architecture name that is not in the registry."""

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes; show it as written.
        return str(self.args[0]) if self.args else ""


class UnknownStrategyError(ModelError, ValueError):
    """A selection strategy name that is not in ``models.selection.STRATEGIES``."""


class WeightsError(ModelError, ValueError):
    """A weights file that cannot be read, or whose tensors do not fit the architecture."""


class CheckpointIntegrityError(ModelError, ValueError):
    """A stored artifact whose content does not match its recorded checksum."""
