"""The report as a person sees it: the written file opened in a real headless Chromium.

Every section, plot and table is there and visible, every picture decoded, the console stayed quiet and
the page asked the network for nothing but itself. Screenshots are kept under test-artifacts/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from defectloop.report import write_report
from defectloop.report.render import SECTIONS
from tests.browser import image_states
from tests.report_helpers import fabricate, report_settings

TABLES = (
    "rounds",
    "defects",
    "champions",
    "history",
    "confusion-binary",
    "confusion-multiclass",
    "calibration",
    "timings",
    "settings",
)
PLOTS = ("learning-curves", "defects", "calibration", "timings")


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report-browser")
    settings = report_settings(root / "data")
    fabricate(settings, checkpoint=True, rounds=5, n_images=48)
    return write_report(settings=settings, out=root / "report.html")


def _readme_copy(full_page: Path, out: Path) -> None:
    """The top of the page (verdict, learning curves) at 80%, in a small palette: docs/images/report.png."""
    with Image.open(full_page) as shot:
        top = shot.convert("RGB").crop((0, 0, 1366, 1000)).resize((1093, 800), Image.Resampling.LANCZOS)
    top.quantize(colors=160, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, optimize=True
    )


def _open(page: Any, path: Path) -> list[str]:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    page.wait_for_function("[...document.images].every(el => el.complete)")
    return requests


def test_every_section_plot_and_table_shows_and_every_image_decodes(
    page: Any, report_file: Path, artifacts: Path
) -> None:
    requests = _open(page, report_file)
    page.screenshot(path=str(artifacts / "report-top.png"))
    page.screenshot(path=str(artifacts / "report.png"), full_page=True)
    _readme_copy(artifacts / "report.png", artifacts / "readme-report.png")

    for key, title in SECTIONS:
        heading = page.locator(f"section#{key} > h2")
        assert heading.inner_text() == title
        assert heading.is_visible(), key
    for name in TABLES:
        table = page.locator(f'table[data-table="{name}"]')
        assert table.count() == 1, name
        assert table.locator("tbody tr").count() > 0, name
        assert table.is_visible(), name
    for name in PLOTS:
        plot = page.locator(f'figure[data-plot="{name}"] img')
        assert plot.count() == 1, name
        box = plot.bounding_box()
        assert box is not None
        assert box["width"] > 200, name
        assert box["height"] > 100, name

    states = image_states(page)
    assert len(states) == len(PLOTS) + 2 * 12  # the plots, then photo and heat-map of 6 + 6 images
    broken = [s["src"][:60] for s in states if not (s["complete"] and s["naturalWidth"] > 0)]
    assert not broken
    assert len(image_states(page, "img.heatmap")) == 12
    assert page.locator('[data-gallery="most"] figure').count() == 6
    assert page.locator('[data-gallery="least"] figure').count() == 6

    verdict = page.locator(".verdict").inner_text()
    assert verdict.startswith("Active learning beat random labelling")
    assert page.console_errors == []
    assert requests == [report_file.as_uri()], requests
    # Nothing wider than a 1366 px screen: no sideways scrolling.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_a_report_without_a_demo_renders_cleanly_too(page: Any, tmp_path: Path, artifacts: Path) -> None:
    settings = report_settings(tmp_path / "data")
    out = write_report(settings=settings, out=tmp_path / "empty.html")
    requests = _open(page, out)
    page.screenshot(path=str(artifacts / "report-empty.png"), full_page=True)
    assert "No demo has run on this database" in page.locator(".verdict").inner_text()
    assert page.locator("section").count() == len(SECTIONS)
    assert image_states(page) == []
    assert page.console_errors == []
    assert requests == [out.as_uri()]
