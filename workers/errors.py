"""Exceptions raised by the ``workers`` package; each also subclasses the builtin it resembles.

Messages say what was wrong and what to do about it. The CLI turns any of them into one line and exit 1.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Root of every error raised by ``workers``."""


class DatasetError(WorkerError, ValueError):
    """A labelled folder that cannot be used as asked: unknown labels, too few images, no such folder."""


class IncompatibleVersionError(WorkerError, ValueError):
    """A model version that does not fit the request (warm start from another architecture or task)."""
