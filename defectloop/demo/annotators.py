"""Simulated annotators (placeholder with the interface agreed with branch ``demo``; theirs replaces it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Truth = Callable[[int], str]  # image id -> ground-truth label (one of settings.classes)


class Annotator(Protocol):
    """Labels what the loop asks for next, answering from ground truth (annotation origin `simulated`)."""

    def label_batch(self, size: int) -> list[int]:
        """Label up to `size` images, the most informative first as the loop ranks them; return the
        ids of the images whose annotation is now recorded in the database, each once."""
        ...
