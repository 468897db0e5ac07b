"""The HTML report of the loop: `defectloop report` writes it, `defectloop demo` writes it at its end."""

from __future__ import annotations

from pathlib import Path

from defectloop.errors import NotBuiltYetError
from defectloop.settings import Settings


def write_report(*, settings: Settings, out: Path, run_name: str | None = None) -> Path:
    """Write the self-contained HTML report of the database ``settings`` names to ``out``; return its path.

    ``run_name`` picks the demo run whose rounds give the learning curves (default: the latest run).
    """
    raise NotBuiltYetError("`defectloop report` is not built yet: the report module is being written")
