"""`defectloop doctor` reports what is reachable and what is missing, naming the setting to change."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from db.migrate import upgrade
from defectloop.doctor import (
    Outcome,
    check_broker,
    check_database,
    check_label_studio,
    check_webhook_secret,
    run_checks,
)
from defectloop.settings import load_settings


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def not_label_studio() -> Iterator[str]:
    """A real HTTP server on loopback that is not Label Studio (answers 404 everywhere)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_embedded_database_unmigrated_then_migrated(tmp_path: Path) -> None:
    settings = load_settings({"DEFECTLOOP_DATA_DIR": str(tmp_path)})
    before = check_database(settings)
    assert before.outcome is Outcome.MISSING
    assert "defectloop db upgrade" in before.detail
    upgrade(settings.database_url, "head")
    after = check_database(settings)
    assert after.outcome is Outcome.OK


def test_unreachable_postgres_names_the_setting(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://app:db-secret@127.0.0.1:{_closed_port()}/nothing"
    settings = load_settings({"DEFECTLOOP_DATA_DIR": str(tmp_path), "DEFECTLOOP_DATABASE_URL": url})
    result = check_database(settings)
    assert result.outcome is Outcome.MISSING
    assert result.setting == "DEFECTLOOP_DATABASE_URL"
    assert "db-secret" not in result.detail + result.target


def test_unreachable_redis_broker_is_missing(tmp_path: Path) -> None:
    url = f"redis://:broker-secret@127.0.0.1:{_closed_port()}/0"
    settings = load_settings({"DEFECTLOOP_DATA_DIR": str(tmp_path), "DEFECTLOOP_BROKER_URL": url})
    result = check_broker(settings, timeout_s=1.0)
    assert result.outcome is Outcome.MISSING
    assert "DEFECTLOOP_BROKER_URL" in result.detail
    assert "broker-secret" not in result.detail + result.target


def test_embedded_broker_needs_no_server(tmp_path: Path) -> None:
    result = check_broker(load_settings({"DEFECTLOOP_DATA_DIR": str(tmp_path)}), timeout_s=2.0)
    assert result.outcome is Outcome.OK
    assert "embedded" in result.detail


def test_label_studio_unreachable_is_optional_and_says_what_to_set(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    settings = load_settings({"DEFECTLOOP_DATA_DIR": str(tmp_path), "DEFECTLOOP_LABEL_STUDIO_URL": url})
    result = check_label_studio(settings, timeout_s=1.0)
    assert result.outcome is Outcome.MISSING
    assert not result.required
    assert "DEFECTLOOP_LABEL_STUDIO_URL" in result.detail


def test_a_server_that_is_not_label_studio_is_reported(tmp_path: Path, not_label_studio: str) -> None:
    settings = load_settings(
        {"DEFECTLOOP_DATA_DIR": str(tmp_path), "DEFECTLOOP_LABEL_STUDIO_URL": not_label_studio}
    )
    result = check_label_studio(settings, timeout_s=2.0)
    assert result.outcome is Outcome.MISSING
    assert "HTTP 404" in result.detail


@pytest.mark.parametrize(
    ("secret", "outcome"), [(None, Outcome.WARNING), ("hunter2", Outcome.WARNING), ("x" * 32, Outcome.OK)]
)
def test_webhook_secret(tmp_path: Path, secret: str | None, outcome: Outcome) -> None:
    env = {"DEFECTLOOP_DATA_DIR": str(tmp_path)}
    if secret:
        env["DEFECTLOOP_WEBHOOK_SECRET"] = secret
    result = check_webhook_secret(load_settings(env))
    assert result.outcome is outcome
    assert "DEFECTLOOP_WEBHOOK_SECRET" in result.setting
    if secret:
        assert secret not in result.detail


@pytest.mark.integration
def test_real_redis_and_postgres_are_reachable(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "DEFECTLOOP_DATA_DIR": str(tmp_path),
            "DEFECTLOOP_BROKER_URL": "redis://127.0.0.1:6379/15",
            "DEFECTLOOP_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        }
    )
    results = {r.component: r for r in run_checks(settings, timeout_s=3.0)}
    assert results["broker"].outcome is Outcome.OK, (
        "Redis must run on 127.0.0.1:6379: " + results["broker"].detail
    )
    # The `postgres` maintenance database is reachable (migrated or not): doctor must say so, not crash.
    assert "reachable" in results["database"].detail, "PostgreSQL must run on 127.0.0.1:5432"
    assert results["label studio"].required is False
