"""The Label Studio harness's own logic, without Label Studio: environment, ports, install stamp, start/stop.

A fake ``label-studio`` executable (a small Python HTTP server) stands in for the real one, so start,
port checks and stop run in well under a second; the real server is tested in
tests/integration/test_label_studio_gateway.py.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from pathlib import Path

import pytest

from labelling.devserver import (
    DB_NAME,
    DEFAULT_VERSION,
    STAMP_NAME,
    TEMPLATE_DB_NAME,
    LabelStudioServer,
    build_server_env,
    default_venv_dir,
    ensure_template_db,
    ensure_venv,
    find_free_port,
    installed_version,
)
from labelling.errors import HarnessError, LabellingError

TOKEN = "ab" * 20
PASSWORD = "pw-not-in-logs-0123"


def make_env(parent: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return build_server_env(
        parent,
        data_dir=tmp_path / "data",
        document_root=tmp_path / "docs",
        username="admin@example.com",
        password=PASSWORD,
        token=TOKEN,
    )


def test_env_sets_every_setting_label_studio_needs(tmp_path: Path) -> None:
    env = make_env({"PATH": "/usr/bin", "HOME": "/root"}, tmp_path)
    assert env["PATH"] == "/usr/bin"
    assert env["HOME"] == "/root"
    assert env["LABEL_STUDIO_BASE_DATA_DIR"] == str(tmp_path / "data")
    assert env["DJANGO_DB"] == "sqlite"
    assert env["LABEL_STUDIO_USERNAME"] == "admin@example.com"
    assert env["LABEL_STUDIO_PASSWORD"] == PASSWORD
    assert env["LABEL_STUDIO_USER_TOKEN"] == TOKEN
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path / "docs")
    assert env["SENTRY_DSN"] == ""
    assert env["FRONTEND_SENTRY_DSN"] == ""
    assert env["COLLECT_ANALYTICS"] == "false"
    assert env["LATEST_VERSION_CHECK"] == "false"
    assert env["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    banned = env["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")
    assert "10.0.0.0/8" in banned
    assert "192.168.0.0/16" in banned
    assert not any(subnet.startswith("127.") for subnet in banned)


def test_env_drops_stray_settings_of_the_parent(tmp_path: Path) -> None:
    parent = {
        "PATH": "/usr/bin",
        "USERNAME": "someone",
        "PASSWORD": "theirs",
        "PORT": "8080",
        "HOST": "0.0.0.0",  # noqa: S104
        "DEBUG": "1",
        "DATABASE_NAME": "/elsewhere.sqlite3",
        "LABEL_STUDIO_API_KEY": "leaked",
        "LABEL_STUDIO_PORT": "9000",
        "HEARTEX_USERNAME": "old",
    }
    env = make_env(parent, tmp_path)
    for name in ("USERNAME", "PASSWORD", "PORT", "HOST", "DEBUG", "DATABASE_NAME"):
        assert name not in env
    assert "LABEL_STUDIO_API_KEY" not in env
    assert "LABEL_STUDIO_PORT" not in env
    assert "HEARTEX_USERNAME" not in env
    assert env["PATH"] == "/usr/bin"
    assert parent["USERNAME"] == "someone", "the parent's mapping must not be changed"


def test_free_port_can_be_bound() -> None:
    port = find_free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_default_venv_dir_names_the_version() -> None:
    assert default_venv_dir().name == f"label-studio-{DEFAULT_VERSION}"
    assert default_venv_dir("9.9.9").parent == default_venv_dir().parent


def test_errors_are_labelling_errors() -> None:
    assert issubclass(HarnessError, LabellingError)
    assert issubclass(HarnessError, RuntimeError)


# -- install stamp -------------------------------------------------------------------------------------


def write_script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_stamp_says_what_is_installed(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    assert installed_version(venv) is None
    (venv / "bin").mkdir(parents=True)
    (venv / STAMP_NAME).write_text("1.23.2\n")
    assert installed_version(venv) is None, "a stamp without the executable is not an install"
    write_script(venv / "bin" / "label-studio", "#!/bin/sh\nexit 1\n")
    assert installed_version(venv) == "1.23.2"


def test_a_stamped_venv_is_not_installed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / "venv"
    write_script(venv / "bin" / "label-studio", "#!/bin/sh\nexit 1\n")
    (venv / STAMP_NAME).write_text(DEFAULT_VERSION)

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("ensure_venv ran a command on an installed venv")

    monkeypatch.setattr("subprocess.Popen", no_subprocess)
    monkeypatch.setattr("subprocess.run", no_subprocess)
    assert ensure_venv(venv) == venv / "bin" / "label-studio"


def test_install_writes_the_stamp_after_pip_succeeds(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # A stand-in python: `-c ...` prints the installed version; `-m pip install ...` "installs".
    write_script(
        venv / "bin" / "python",
        "#!/bin/sh\n"
        f'if [ "$1" = "-c" ]; then echo {DEFAULT_VERSION}; exit 0; fi\n'
        'echo "Collecting label-studio"; touch "$(dirname "$0")/label-studio"; exit 0\n',
    )
    (venv / STAMP_NAME).write_text("1.0.0")
    lines: list[str] = []
    assert ensure_venv(venv, progress=lines.append) == venv / "bin" / "label-studio"
    assert lines == ["Collecting label-studio"]
    assert installed_version(venv) == DEFAULT_VERSION


def test_a_failed_install_says_why(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    write_script(
        venv / "bin" / "python",
        "#!/bin/sh\necho 'ERROR: No matching distribution found for label-studio==1.23.2'; exit 1\n",
    )
    with pytest.raises(HarnessError, match="No matching distribution") as caught:
        ensure_venv(venv, progress=lambda line: None)
    assert "pip could not install label-studio==1.23.2" in str(caught.value)
    assert installed_version(venv) is None


def test_the_template_database_is_made_once(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    calls = tmp_path / "calls"
    # A stand-in python that "migrates": writes the database where Label Studio would.
    write_script(
        venv / "bin" / "python",
        "#!/bin/sh\n"
        f'echo run >> "{calls}"\n'
        'test -n "$DJANGO_SETTINGS_MODULE" || exit 9\n'
        f'echo migrated > "$LABEL_STUDIO_BASE_DATA_DIR/{DB_NAME}"\n',
    )
    template = ensure_template_db(venv, progress=lambda line: None)
    assert template == venv / TEMPLATE_DB_NAME
    assert template.read_text() == "migrated\n"
    assert ensure_template_db(venv) == template
    assert calls.read_text().count("run") == 1


def test_failed_migrations_say_why(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    write_script(
        venv / "bin" / "python", "#!/bin/sh\necho 'django.db.utils.OperationalError: boom'; exit 1\n"
    )
    with pytest.raises(HarnessError, match="boom"):
        ensure_template_db(venv, progress=lambda line: None)
    assert not (venv / TEMPLATE_DB_NAME).exists()


# -- start / stop with a fake label-studio ----------------------------------------------------------

FAKE_LABEL_STUDIO = """#!{python}
import http.server, json, os, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
if os.environ.get("FAKE_MODE") == "crash":
    print("token is", os.environ["LABEL_STUDIO_USER_TOKEN"], "password", os.environ["LABEL_STUDIO_PASSWORD"])
    sys.exit(3)
if os.environ.get("FAKE_MODE") == "moved":
    print(f"Starting development server at http://127.0.0.1:{{port + 1}}/", flush=True)
    time.sleep(60)
print(f"Starting development server at http://127.0.0.1:{{port}}/", flush=True)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health/":
            body = {{"status": "UP"}}
        elif self.headers.get("Authorization") == "Token " + os.environ["LABEL_STUDIO_USER_TOKEN"]:
            body = {{"email": os.environ["LABEL_STUDIO_USERNAME"]}}
        else:
            self.send_response(401); self.end_headers(); return
        data = json.dumps(body).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)

http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture
def fake_label_studio(tmp_path: Path) -> Path:
    executable = tmp_path / "bin" / "label-studio"
    write_script(executable, FAKE_LABEL_STUDIO.format(python=sys.executable))
    return executable


def test_start_waits_for_health_and_stop_ends_the_process(
    fake_label_studio: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    template = tmp_path / "template.sqlite3"
    template.write_text("an empty migrated database")
    server = LabelStudioServer(
        fake_label_studio, data_dir=tmp_path / "data", document_root=tmp_path / "docs", template_db=template
    )
    with server:
        assert (tmp_path / "data" / DB_NAME).read_text() == "an empty migrated database"
        assert server.url.startswith("http://127.0.0.1:")
        assert len(server.token) == 40
        assert int(server.token, 16) >= 0
        assert server.pid is not None
        pid = server.pid
        assert server.token not in repr(server)
        assert server.password not in repr(server)
        token, password = server.token, server.password
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert token not in caplog.text
    assert password not in caplog.text
    assert (tmp_path / "docs").is_dir()

    # The same data dir again: the same credentials (Label Studio keeps the first user's token).
    again = LabelStudioServer(fake_label_studio, data_dir=tmp_path / "data", document_root=tmp_path / "docs")
    with again:
        assert again.token == token
        assert again.password == password


def test_an_early_exit_raises_with_the_log_and_no_secrets(
    fake_label_studio: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "crash")
    server = LabelStudioServer(
        fake_label_studio,
        data_dir=tmp_path / "data",
        document_root=tmp_path / "docs",
        token=TOKEN,
        password=PASSWORD,
    )
    with pytest.raises(HarnessError, match="exited with code 3") as caught:
        server.start()
    message = str(caught.value)
    assert "token is ***" in message
    assert TOKEN not in message
    assert PASSWORD not in message
    assert server.pid is None


def test_a_server_on_another_port_is_refused(
    fake_label_studio: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "moved")
    server = LabelStudioServer(fake_label_studio, data_dir=tmp_path / "data", document_root=tmp_path / "docs")
    with pytest.raises(HarnessError, match="instead of"):
        server.start()
    assert server.pid is None


def test_a_malformed_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="40"):
        LabelStudioServer(tmp_path / "ls", data_dir=tmp_path, document_root=tmp_path, token="short")


def test_url_before_start_says_what_to_do(tmp_path: Path) -> None:
    server = LabelStudioServer(tmp_path / "ls", data_dir=tmp_path, document_root=tmp_path)
    with pytest.raises(HarnessError, match=r"start\(\)"):
        _ = server.url
    server.stop()  # stopping a server never started is harmless
