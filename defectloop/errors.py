"""The application's exception tree.

Each error also subclasses the builtin it resembles, so callers that only know Python's own
exceptions still catch it. Messages say what was wrong and what to do about it; they never carry a
secret. The leaf packages (``db``, ``models``, ``labelling``) keep trees of their own, because they
may not import this package; the CLI turns any of them into a one-line message and an exit code.
"""

from __future__ import annotations


class DefectloopError(Exception):
    """Root of the application's own errors."""


class SettingsError(DefectloopError, ValueError):
    """A setting has a wrong value; the message names the environment variable to change."""


class ServiceUnavailableError(DefectloopError, ConnectionError):
    """A service the command needs (database, broker, Label Studio) cannot be reached."""


class NotBuiltYetError(DefectloopError, NotImplementedError):
    """A planned command that has not been built yet; the message names the issue that plans it."""
