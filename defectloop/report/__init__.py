"""The HTML report of the loop: `defectloop report` writes it, `defectloop demo` writes it at its end.

``load`` reads the database into the dataclasses of ``data``; ``pictures`` adds the gallery's photos and
heat-maps; ``render`` and ``plots`` turn the dataclasses into one self-contained HTML page.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from defectloop.settings import Settings, redact_url

logger = logging.getLogger(__name__)

GALLERY_SIZE = 6  # most certain and least certain images each


def _write_atomically(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        tmp.chmod(0o644)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_report(
    *, settings: Settings, out: Path, run_name: str | None = None, show_progress: bool = False
) -> Path:
    """Write the self-contained HTML report of the database ``settings`` names to ``out``; return its path.

    ``run_name`` picks the demo run whose rounds give the learning curves (default: the latest run; an
    unknown name raises ``DemoRunNotFoundError``). Without any demo run the report still shows the
    registry (champions, history, gallery) and says that no demo ran. ``show_progress`` draws rich
    progress bars on stderr.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from db.session import session_scope
    from defectloop.app import open_database
    from defectloop.report.load import load_report_data
    from defectloop.report.pictures import add_pictures
    from defectloop.report.render import render_report

    started = time.perf_counter()
    out = Path(out)
    database = open_database(settings)
    progress = Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show_progress,
    )
    try:
        with progress:
            step = progress.add_task("report: reading the database", total=1)
            with session_scope(database.sessions) as session:
                data = load_report_data(
                    session,
                    run_name=run_name,
                    gallery_size=GALLERY_SIZE,
                    database=redact_url(settings.database_url),
                    current_settings=settings.redacted(),
                )
            progress.advance(step)
            pictures = progress.add_task("report: photos and heat-maps", total=len(data.gallery))
            gallery = add_pictures(
                data.gallery, sessions=database.sessions, on_item=lambda: progress.advance(pictures)
            )
            data = replace(data, gallery=gallery)
            drawing = progress.add_task("report: plots and page", total=1)
            html = render_report(data)
            _write_atomically(out, html)
            progress.advance(drawing)
    finally:
        database.dispose()
    logger.info(
        "report written to %s (%d KB, %.1f s)", out, len(html.encode()) // 1024, time.perf_counter() - started
    )
    return out
