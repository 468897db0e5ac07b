"""The README's commands are the ones CI and a new user run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"^(bash scripts/[a-z]+\.sh)\s*$", readme, flags=re.MULTILINE)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = _readme_commands()
    assert "bash scripts/test.sh" in commands
    assert "bash scripts/demo.sh" in commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^bash scripts/test\.sh$", ci, flags=re.MULTILINE)


def test_the_torch_pair_is_pinned_together() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dependencies = project["dependencies"]
    assert "torch==2.14.1" in dependencies
    assert "torchvision==0.29.1" in dependencies
    assert project["scripts"]["defectloop"] == "defectloop.cli:main"


def test_scripts_exist_and_stop_on_errors() -> None:
    for name in ("setup.sh", "test.sh", "demo.sh"):
        text = (ROOT / "scripts" / name).read_text()
        assert "set -euo pipefail" in text, name
