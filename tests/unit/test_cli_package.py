"""The shape of ``defectloop/cli/``: small modules, a start-up that never imports torch, and the
``python -m defectloop.cli`` form that ``defectloop up`` and the demo start their children with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "defectloop" / "cli"
MAX_LINES = 400


def _python(args: list[str], *, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter on this checkout (this test process may have imported torch already)."""
    env = {"DEFECTLOOP_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda path: path.name)
def test_every_cli_module_stays_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines < MAX_LINES, f"{path.name} has {lines} lines; split its commands into another group module"


def test_help_of_every_command_does_not_import_torch(tmp_path: Path) -> None:
    code = """
import sys
from typer.main import get_command
from typer.testing import CliRunner
from defectloop.cli import app

def paths(command, path):
    yield path
    for name in getattr(command, "commands", {}):
        yield from paths(command.commands[name], [*path, name])

runner = CliRunner()
for path in paths(get_command(app), []):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, (path, result.output)
heavy = sorted(name for name in ("torch", "timm", "torchvision") if name in sys.modules)
assert not heavy, f"--help imported {heavy}"
"""
    result = _python(["-c", code], data_dir=tmp_path)
    assert result.returncode == 0, result.stderr


def test_python_dash_m_runs_the_cli(tmp_path: Path) -> None:
    result = _python(["-m", "defectloop.cli", "--help"], data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "retrain" in result.stdout
