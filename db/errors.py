"""Exceptions raised by the database layer; each also subclasses the builtin it resembles."""

from __future__ import annotations


class DatabaseError(Exception):
    """Root of every error raised by `db`."""


class DatabaseUnavailableError(DatabaseError, ConnectionError):
    """The database server or file cannot be reached."""


class DatabaseNotMigratedError(DatabaseError, RuntimeError):
    """The database schema is not at the revision this code needs."""


class NotFoundError(DatabaseError, LookupError):
    """A row that the caller named by id does not exist."""


class IntegrityViolation(DatabaseError, ValueError):  # noqa: N818 (the name the project agreed on)
    """A write would break a rule of the schema or contradict what is already recorded."""


class InvalidTransitionError(DatabaseError, ValueError):
    """A status change that the lifecycle of the row does not allow."""
