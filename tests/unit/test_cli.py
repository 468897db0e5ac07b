"""The console script, run as a user runs it: a real process, real files, exit codes and messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from defectloop.settings import env_name

DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")


def run_cli(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
    environ.update({"DEFECTLOOP_DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1", **env})
    return subprocess.run(
        [DEFECTLOOP, *args], capture_output=True, text=True, env=environ, timeout=120, check=False
    )


def test_help_lists_the_planned_commands(tmp_path: Path) -> None:
    result = run_cli("--help", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in (
        "synth",
        "doctor",
        "status",
        "db",
        "labelling",
        "up",
        "watch",
        "worker",
        "beat",
        "serve",
        "train",
        "evaluate",
        "import",
        "retrain",
        "compare",
        "promote",
        "reject",
        "rollback",
        "versions",
        "demo",
    ):
        assert command in result.stdout, command
    assert "(not built yet)" in result.stdout


@pytest.mark.parametrize(
    ("args", "issue"),
    [
        (("report",), "champion/challenger"),
    ],
)
def test_planned_commands_refuse_loudly(tmp_path: Path, args: tuple[str, ...], issue: str) -> None:
    result = run_cli(*args, data_dir=tmp_path)
    assert result.returncode == 2
    assert "not built yet" in result.stderr
    assert issue in result.stderr


@pytest.mark.parametrize(
    "args", [("serve",), ("labelling", "init"), ("labelling", "push"), ("labelling", "reconcile")]
)
def test_label_studio_commands_name_the_missing_settings(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run_cli(*args, data_dir=tmp_path, DEFECTLOOP_WEBHOOK_SECRET="s3cret-value")
    assert result.returncode == 1, result.stderr
    assert "set DEFECTLOOP_LABEL_STUDIO_API_KEY" in result.stderr
    assert "DEFECTLOOP_WEBHOOK_SECRET" not in result.stderr  # it is set
    assert "s3cret-value" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_worker_refuses_an_unknown_queue_naming_the_valid_ones(tmp_path: Path) -> None:
    result = run_cli("worker", "--queues", "inference,bogus", data_dir=tmp_path)
    assert result.returncode == 2
    assert "maintenance" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_wrong_setting_stops_the_start_naming_the_variable(tmp_path: Path) -> None:
    result = run_cli("status", data_dir=tmp_path, DEFECTLOOP_IMAGE_SIZE="3")
    assert result.returncode == 2
    assert "DEFECTLOOP_IMAGE_SIZE" in result.stderr
    assert "Traceback" not in result.stderr


def test_unmigrated_database_is_refused_with_the_command_to_run(tmp_path: Path) -> None:
    result = run_cli("status", data_dir=tmp_path)
    assert result.returncode == 1
    assert "defectloop db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def test_upgrade_then_status_on_the_embedded_default(tmp_path: Path) -> None:
    upgraded = run_cli("db", "upgrade", data_dir=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert (tmp_path / "defectloop.db").is_file()
    current = run_cli("db", "current", data_dir=tmp_path)
    assert "not migrated" not in current.stdout
    status = run_cli("status", data_dir=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "champion binary: (none yet)" in status.stdout


def test_downgrade_needs_confirmation(tmp_path: Path) -> None:
    assert run_cli("db", "upgrade", data_dir=tmp_path).returncode == 0
    refused = run_cli("db", "downgrade", "base", data_dir=tmp_path)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert run_cli("db", "downgrade", "base", "--yes", data_dir=tmp_path).returncode == 0
    assert run_cli("status", data_dir=tmp_path).returncode == 1


def test_synth_writes_an_image_folder(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    result = run_cli("synth", str(out), "--n", "12", "--seed", "3", "--size", "64", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "manifest.csv").is_file()
    images = sorted(p for p in out.rglob("*.png") if p.parent.name != "masks")
    assert len(images) == 12
    assert len({p.parent.name for p in images}) == 6


def test_settings_command_masks_secrets(tmp_path: Path) -> None:
    result = run_cli(
        "settings",
        data_dir=tmp_path,
        DEFECTLOOP_LABEL_STUDIO_API_KEY="ls-token-abcdef",
        DEFECTLOOP_BROKER_URL="redis://:broker-pass@127.0.0.1:6379/0",
    )
    assert result.returncode == 0, result.stderr
    assert env_name("label_studio_api_key") in result.stdout
    assert "ls-token-abcdef" not in result.stdout + result.stderr
    assert "broker-pass" not in result.stdout + result.stderr


def test_doctor_reports_missing_services_without_leaking_secrets(tmp_path: Path) -> None:
    assert run_cli("db", "upgrade", data_dir=tmp_path).returncode == 0
    result = run_cli(
        "doctor",
        data_dir=tmp_path,
        DEFECTLOOP_BROKER_URL="redis://:broker-pass@127.0.0.1:1/0",
        DEFECTLOOP_LABEL_STUDIO_URL="http://127.0.0.1:1",
        DEFECTLOOP_LABEL_STUDIO_API_KEY="ls-token-abcdef",
        DEFECTLOOP_WEBHOOK_SECRET="webhook-secret-value",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "missing: broker" in result.stderr
    assert "DEFECTLOOP_BROKER_URL" in output
    assert "DEFECTLOOP_LABEL_STUDIO_URL" in output
    for secret in ("broker-pass", "ls-token-abcdef", "webhook-secret-value"):
        assert secret not in output


def test_status_counts_quarantined_files_by_kind_of_reason(tmp_path: Path) -> None:
    folder = tmp_path / "labelled"
    generated = tmp_path / "gen"
    assert run_cli("synth", str(generated), "--n", "6", "--size", "32", data_dir=tmp_path).returncode == 0
    for label in ("ok", "hole"):
        (folder / label).mkdir(parents=True)
        for image in (generated / label).glob("*.png"):
            (folder / label / image.name).write_bytes(image.read_bytes())
    good = next((folder / "ok").glob("*.png")).read_bytes()
    (folder / "ok" / "cut1.png").write_bytes(good[: len(good) // 2])
    (folder / "ok" / "cut2.png").write_bytes(good[: len(good) // 3])
    (folder / "hole" / "notes.png").write_bytes(b"not a photo\n" * 20)
    assert run_cli("db", "upgrade", data_dir=tmp_path).returncode == 0
    imported = run_cli("import", str(folder), data_dir=tmp_path)
    assert imported.returncode == 0, imported.stderr
    status = run_cli("status", data_dir=tmp_path)
    assert status.returncode == 0, status.stderr
    lines = [" ".join(line.replace("│", " ").split()) for line in status.stdout.splitlines()]
    assert "truncated image 2" in lines
    assert "not an image 1" in lines
    assert "labelled 2" in lines
