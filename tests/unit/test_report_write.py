"""`write_report` and `defectloop report` end to end on a SQLite file: the page written, its gallery's
photos and real Grad-CAM heat-maps, the fallbacks when a heat-map cannot be made, and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from defectloop.report import write_report
from defectloop.report.load import DemoRunNotFoundError
from tests.report_helpers import fabricate, report_settings

DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")


def run_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
    environ.update({"DEFECTLOOP_DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1"})
    return subprocess.run(
        [DEFECTLOOP, *args], capture_output=True, text=True, env=environ, timeout=180, check=False
    )


def test_the_report_embeds_photos_and_real_heatmaps_of_the_champion(tmp_path: Path) -> None:
    settings = report_settings(tmp_path / "data")
    sample = fabricate(settings, checkpoint=True)
    out = write_report(settings=settings, out=tmp_path / "out" / "report.html", show_progress=True)
    html = out.read_text(encoding="utf-8")
    assert out == tmp_path / "out" / "report.html"
    assert html.count('class="photo"') == 12
    assert html.count('class="heatmap"') == 12
    assert "no heat-map" not in html
    assert sample.binary_champion in html
    assert 'data-outcome="win"' in html
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left behind


def test_without_a_checkpoint_the_photos_are_shown_alone_with_the_reason(tmp_path: Path) -> None:
    settings = report_settings(tmp_path / "data")
    fabricate(settings, checkpoint=False, rounds=1, n_images=12)
    html = write_report(settings=settings, out=tmp_path / "r.html").read_text(encoding="utf-8")
    assert html.count('class="photo"') == 12
    assert 'class="heatmap"' not in html
    assert "no heat-map: the binary champion&#x27;s checkpoint" in html
    assert "is missing" in html


def test_a_missing_photo_is_named_not_embedded(tmp_path: Path) -> None:
    settings = report_settings(tmp_path / "data")
    fabricate(settings, checkpoint=False, rounds=1, n_images=12)
    for photo in (settings.data_dir / "sample" / "photos").rglob("*.png"):
        photo.unlink()
    html = write_report(settings=settings, out=tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'class="photo"' not in html
    assert html.count("photo not found at") == 12


def test_an_unknown_run_is_an_error_naming_the_runs(tmp_path: Path) -> None:
    settings = report_settings(tmp_path / "data")
    fabricate(settings, checkpoint=False, rounds=1, n_images=12)
    with pytest.raises(DemoRunNotFoundError, match="runs: sample"):
        write_report(settings=settings, out=tmp_path / "r.html", run_name="nope")
    assert not (tmp_path / "r.html").exists()


def test_the_command_writes_the_report_into_the_data_folder_and_prints_its_path(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    report_settings(data_dir)
    result = run_cli("report", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    written = data_dir / "report.html"
    assert result.stdout.strip() == str(written)
    html = written.read_text(encoding="utf-8")
    assert "No demo has run on this database" in html
    assert "Traceback" not in result.stderr


def test_the_command_takes_an_output_path_and_a_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    fabricate(report_settings(data_dir), checkpoint=False, rounds=1, n_images=12)
    out = tmp_path / "elsewhere" / "r.html"
    result = run_cli("report", "--out", str(out), "--run", "sample", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert "Demo run <b>sample</b>" in out.read_text(encoding="utf-8")
    refused = run_cli("report", "--run", "nope", data_dir=data_dir)
    assert refused.returncode == 1
    assert "no demo run named 'nope'" in refused.stderr
    assert "runs: sample" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_command_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    result = run_cli("report", data_dir=tmp_path / "empty")
    assert result.returncode == 1
    assert "defectloop db upgrade" in result.stderr
