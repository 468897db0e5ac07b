"""The labelling package's exception tree.

Each error also subclasses the builtin it resembles, so callers that only know Python's own exceptions
still catch it. Messages say what was wrong and what to do; they never carry the API key or a password.
"""

from __future__ import annotations


class LabellingError(Exception):
    """Root of the labelling package's errors."""


class LabelStudioError(LabellingError, RuntimeError):
    """Label Studio refused a request (a 4xx other than 401/403); the message has the server's reason."""


class LabelStudioUnavailableError(LabelStudioError, ConnectionError):
    """Label Studio cannot be reached, timed out or answered 5xx: transient, retry with backoff."""


class LabelStudioAuthError(LabelStudioError, PermissionError):
    """Label Studio rejected the API key (401/403): check DEFECTLOOP_LABEL_STUDIO_API_KEY."""


class HarnessError(LabellingError, RuntimeError):
    """The local Label Studio harness could not install or start a server; the message has the log tail."""


class PayloadError(LabellingError, ValueError):
    """A Label Studio payload (webhook body, annotation, task) is malformed; the message names the field."""
