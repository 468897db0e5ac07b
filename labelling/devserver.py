"""A local Label Studio server for tests and developers: installed into its own venv, started headless.

Label Studio pins dependencies (redis<5.3, Django, pytz, ...) that clash with the application's, so it
lives in a virtual environment of its own (``~/.cache/defectloop/label-studio-<version>``), installed once
by :func:`ensure_venv`. :class:`LabelStudioServer` starts it on a free 127.0.0.1 port with a throw-away
SQLite database, a known admin user and a known API token, and waits until it answers.

Command line::

    python -m labelling.devserver ensure      # install and migrate (a minute or two, once); prints where
    python -m labelling.devserver serve       # run a server in the foreground; prints URL and token

This module never imports ``label_studio_sdk``: the harness speaks plain HTTP.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import TypeVar

import httpx

from labelling.errors import HarnessError

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_VERSION = "1.23.2"
DEFAULT_USERNAME = "defectloop@localhost.localdomain"
STAMP_NAME = ".defectloop-label-studio-installed"
"""Written in the venv after a successful install; holds the installed version."""

TEMPLATE_DB_NAME = ".defectloop-template.sqlite3"
"""An empty, migrated Label Studio database kept in the venv: copied into a new data dir, it saves the
migrations of a cold start (most of its half minute or more)."""

DB_NAME = "label_studio.sqlite3"
"""Where Label Studio keeps its SQLite database inside its data dir (its DATABASE_NAME default)."""

CREDENTIALS_NAME = ".defectloop-credentials.json"
"""Written in a server's data dir: Label Studio applies the user and token only when it first creates the
user, so a restart on the same data dir must reuse them."""

# The server falls back to these unprefixed names (and reads DATABASE_NAME directly), so a stray value in
# a developer's shell would silently change its user, port, host or database.
_STRIPPED_NAMES = frozenset({"USERNAME", "PASSWORD", "USER_TOKEN", "PORT", "HOST", "DEBUG", "DATABASE_NAME"})
# Our own settings win; any other LABEL_STUDIO_* / HEARTEX_* from the parent could override defaults.
_STRIPPED_PREFIXES = ("LABEL_STUDIO_", "HEARTEX_")

# Reserved ranges still banned for webhooks and ML backends; loopback is left out, so a receiver on
# 127.0.0.1 is reachable (the default list bans it and answers 403 "reserved network address").
BANNED_SUBNETS = (
    "0.0.0.0/8,10.0.0.0/8,100.64.0.0/10,169.254.0.0/16,172.16.0.0/12,192.168.0.0/16,224.0.0.0/4,240.0.0.0/4"
)

_PIP_TAIL_LINES = 40
_LOG_TAIL_CHARS = 4000


def default_venv_dir(version: str = DEFAULT_VERSION) -> Path:
    """Where the Label Studio venv of ``version`` lives: ``~/.cache/defectloop/label-studio-<version>``."""
    return Path.home() / ".cache" / "defectloop" / f"label-studio-{version}"


def _executable(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "label-studio"


def installed_version(venv_dir: Path) -> str | None:
    """The version recorded by the last successful install into ``venv_dir``, or None if there was none."""
    stamp = venv_dir / STAMP_NAME
    try:
        version = stamp.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not _executable(venv_dir).exists():
        return None
    return version or None


def _log_progress(line: str) -> None:
    logger.debug("%s", line)


@contextlib.contextmanager
def _install_lock(venv_dir: Path) -> Iterator[None]:
    # Two processes (a test run and a developer's shell) must not pip-install into one venv at once.
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv_dir.parent / f"{venv_dir.name}.lock"
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _run_streaming(
    command: Sequence[str], progress: Callable[[str], None], *, env: Mapping[str, str] | None = None
) -> tuple[int, list[str]]:
    """Run ``command``, feeding each output line to ``progress``; returns the exit code and the last lines."""
    tail: deque[str] = deque(maxlen=_PIP_TAIL_LINES)
    with subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=None if env is None else dict(env),
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail.append(line)
            progress(line)
        code = proc.wait()
    return code, list(tail)


def ensure_venv(
    venv_dir: Path,
    *,
    version: str = DEFAULT_VERSION,
    progress: Callable[[str], None] = _log_progress,
) -> Path:
    """Install ``label-studio==version`` into its own venv at ``venv_dir`` unless it is there already.

    Returns the path of the ``label-studio`` executable. ``progress`` receives pip's output line by line.
    Raises :class:`HarnessError` (with the end of pip's output) if the venv or the install fails.
    """
    venv_dir = venv_dir.expanduser().absolute()
    if installed_version(venv_dir) == version:
        return _executable(venv_dir)
    with _install_lock(venv_dir):
        if installed_version(venv_dir) == version:  # another process finished it while we waited
            return _executable(venv_dir)
        python = venv_dir / "bin" / "python"
        if not python.exists():
            logger.info("creating the Label Studio venv at %s", venv_dir)
            code, tail = _run_streaming([sys.executable, "-m", "venv", str(venv_dir)], progress)
            if code != 0:
                raise HarnessError(
                    f"could not create a venv at {venv_dir} with {sys.executable} (exit {code}); "
                    "check that the python3.11 venv module is installed (apt: python3.11-venv):\n"
                    + "\n".join(tail)
                )
        (venv_dir / STAMP_NAME).unlink(missing_ok=True)
        (venv_dir / TEMPLATE_DB_NAME).unlink(missing_ok=True)
        logger.info("installing label-studio==%s into %s (about a minute the first time)", version, venv_dir)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
        code, tail = _run_streaming([*pip, f"label-studio=={version}"], progress)
        if code != 0:
            raise HarnessError(
                f"pip could not install label-studio=={version} into {venv_dir} (exit {code}); check the "
                "network or the package index, or delete that folder and try again. End of pip's output:\n"
                + "\n".join(tail)
            )
        # Read the version from the metadata, never with `label-studio --version`, which starts a server.
        probe = "import importlib.metadata as m; print(m.version('label-studio'))"
        found = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, check=False
        ).stdout.strip()
        if found != version or not _executable(venv_dir).exists():
            raise HarnessError(
                f"after pip install, {venv_dir} has label-studio {found or 'missing'} instead of {version}; "
                "delete that folder and run `python -m labelling.devserver ensure` again"
            )
        (venv_dir / STAMP_NAME).write_text(version + "\n", encoding="utf-8")
    logger.info("label-studio %s is installed in %s", version, venv_dir)
    return _executable(venv_dir)


# Runs in the Label Studio venv: what `label-studio start` does before serving, minus user and server.
_MIGRATE_SCRIPT = """
import os, sys, label_studio
sys.path.insert(0, os.path.dirname(label_studio.__file__))
import django
django.setup()
from django.core.management import call_command
call_command("migrate", "--no-color", verbosity=0)
"""


def ensure_template_db(venv_dir: Path, *, progress: Callable[[str], None] = _log_progress) -> Path:
    """An empty database migrated by the Label Studio in ``venv_dir``, made once and kept there.

    Give it to :class:`LabelStudioServer` as ``template_db``. Raises :class:`HarnessError` if the
    migrations fail.
    """
    venv_dir = venv_dir.expanduser().absolute()
    template = venv_dir / TEMPLATE_DB_NAME
    if template.exists():
        return template
    with _install_lock(venv_dir):
        if template.exists():
            return template
        logger.info("migrating an empty Label Studio database once, into %s (about a minute)", template)
        with tempfile.TemporaryDirectory(prefix="defectloop-ls-template-") as tmp:
            data_dir = Path(tmp)
            env = _settings_env(os.environ, data_dir=data_dir, document_root=data_dir)
            env["DJANGO_SETTINGS_MODULE"] = "label_studio.core.settings.label_studio"
            code, tail = _run_streaming(
                [str(venv_dir / "bin" / "python"), "-c", _MIGRATE_SCRIPT], progress, env=env
            )
            if code != 0 or not (data_dir / DB_NAME).exists():
                raise HarnessError(
                    f"Label Studio's migrations failed in {venv_dir} (exit {code}); delete that folder and "
                    "run `python -m labelling.devserver ensure` again. End of the output:\n" + "\n".join(tail)
                )
            partial = template.with_suffix(".partial")
            shutil.copyfile(data_dir / DB_NAME, partial)
            partial.replace(template)
    return template


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it: bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def build_server_env(
    parent: Mapping[str, str],
    *,
    data_dir: Path,
    document_root: Path,
    username: str,
    password: str,
    token: str,
) -> dict[str, str]:
    """The environment of a headless Label Studio server: ``parent`` minus stray settings, plus ours.

    The result holds the password and token: never log it.
    """
    env = _settings_env(parent, data_dir=data_dir, document_root=document_root)
    env.update(
        {
            "LABEL_STUDIO_USERNAME": username,
            "LABEL_STUDIO_PASSWORD": password,
            "LABEL_STUDIO_USER_TOKEN": token,
        }
    )
    return env


def _settings_env(parent: Mapping[str, str], *, data_dir: Path, document_root: Path) -> dict[str, str]:
    """Everything of :func:`build_server_env` but the user and its secrets (enough for migrations)."""
    env = {
        name: value
        for name, value in parent.items()
        if name not in _STRIPPED_NAMES and not name.startswith(_STRIPPED_PREFIXES)
    }
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "DJANGO_DB": "sqlite",
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "COLLECT_ANALYTICS": "false",
            "LATEST_VERSION_CHECK": "false",
            "USE_DEFAULT_BANNED_SUBNETS": "false",
            "USER_ADDITIONAL_BANNED_SUBNETS": BANNED_SUBNETS,
            # So the "Starting development server at ..." line reaches the log file at once.
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _load_or_create_credentials(
    data_dir: Path, *, username: str | None, password: str | None, token: str | None
) -> tuple[str, str, str]:
    path = data_dir / CREDENTIALS_NAME
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
    creds = (
        username or stored.get("username") or DEFAULT_USERNAME,
        password or stored.get("password") or secrets.token_urlsafe(16),
        token or stored.get("token") or secrets.token_hex(20),
    )
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(dict(zip(("username", "password", "token"), creds, strict=True)), out)
    return creds


def _once_started(value: _T | None) -> _T:
    """``value``, set by :meth:`LabelStudioServer.start`; `HarnessError` while it is still unset."""
    if value is None:
        raise HarnessError("the Label Studio server has not been started; call start() first")
    return value


class LabelStudioServer:
    """One headless Label Studio process on 127.0.0.1, with a known admin user and legacy API token.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The data dir holds the SQLite
    database and the credentials; reuse it to keep projects across restarts. Secrets are not in ``repr``.
    """

    def __init__(
        self,
        executable: Path,
        *,
        data_dir: Path,
        document_root: Path,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        startup_timeout_s: float = 120.0,
        log_path: Path | None = None,
        template_db: Path | None = None,
    ) -> None:
        if token is not None and not re.fullmatch(r"[0-9a-f]{40}", token):
            raise ValueError("token must be 40 lowercase hex characters (like secrets.token_hex(20))")
        self._executable = Path(executable)
        self._data_dir = Path(data_dir).absolute()
        self._document_root = Path(document_root).absolute()
        self._requested_port = port
        self._port: int | None = None
        self._username, self._password, self._token = username, password, token
        self._startup_timeout_s = startup_timeout_s
        self._log_path = Path(log_path) if log_path is not None else self._data_dir / "label-studio.log"
        self._template_db = template_db
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        return f"LabelStudioServer(url={self.url if self._port else None!r}, pid={self.pid!r})"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return _once_started(self._port)

    @property
    def token(self) -> str:
        """The admin's legacy API token (``Authorization: Token <token>``)."""
        return _once_started(self._token)

    @property
    def username(self) -> str:
        """The admin's e-mail address (log in with it and :attr:`password`)."""
        return self._username or DEFAULT_USERNAME

    @property
    def password(self) -> str:
        return _once_started(self._password)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def document_root(self) -> Path:
        return self._document_root

    def __enter__(self) -> LabelStudioServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait until it answers on its port with our user's token.

        Raises :class:`HarnessError` with the end of the server's log if it exits or is not up in time.
        """
        if self._proc is not None:
            raise HarnessError("this Label Studio server is already started; stop() it first")
        self._username, self._password, self._token = _load_or_create_credentials(
            self._data_dir, username=self._username, password=self._password, token=self._token
        )
        self._document_root.mkdir(parents=True, exist_ok=True)
        database = self._data_dir / DB_NAME
        if self._template_db is not None and not database.exists():
            # Label Studio sees a database that is already migrated and skips straight to serving.
            shutil.copyfile(self._template_db, database)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._port = self._requested_port or find_free_port()
        env = build_server_env(
            os.environ,
            data_dir=self._data_dir,
            document_root=self._document_root,
            username=self._username,
            password=self._password,
            token=self._token,
        )
        command = [
            str(self._executable),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(self._port),
        ]
        logger.info("starting Label Studio on %s (log: %s)", self.url, self._log_path)
        with self._log_path.open("ab") as log_file:
            # The log is appended to across restarts on one data dir; only this run's part counts.
            self._log_offset = log_file.tell()
            # A session of its own: Ctrl-C in a terminal reaches us, and we stop the server in order.
            self._proc = subprocess.Popen(
                command,
                env=env,
                cwd=self._data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        logger.info("Label Studio is up on %s (pid %s)", self.url, self.pid)

    def _wait_until_up(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._proc.poll() is not None:
                    raise HarnessError(
                        f"Label Studio exited with code {self._proc.returncode} while starting; "
                        f"see {self._log_path}. End of its log:\n{self.log_tail()}"
                    )
                moved = self._port_in_log()
                if moved is not None and moved != self._port:
                    raise HarnessError(
                        f"Label Studio started on port {moved} instead of {self._port} (the port was taken); "
                        "start it again, or pass a free --port"
                    )
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    health = client.get(f"{self.url}/health/")
                    if health.status_code == 200 and health.json().get("status") == "UP":
                        break
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"Label Studio did not answer {self.url}/health/ within "
                        f"{self._startup_timeout_s:.0f} s; see {self._log_path}. End of its log:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.5)
            # /health/ does not prove the answer came from our process: only ours knows our token.
            whoami = client.get(
                f"{self.url}/api/current-user/whoami", headers={"Authorization": f"Token {self._token}"}
            )
        if whoami.status_code != 200 or whoami.json().get("email") != self._username:
            raise HarnessError(
                f"the server on {self.url} does not accept our token (HTTP {whoami.status_code}): either "
                f"another server holds that port, or {self._data_dir} was created with other credentials "
                f"(delete it or give its token)"
            )

    def _port_in_log(self) -> int | None:
        match = re.search(r"Starting development server at http://[^:/]+:(\d+)/", self._read_log())
        return int(match.group(1)) if match else None

    def _read_log(self) -> str:
        try:
            with self._log_path.open("rb") as log_file:
                log_file.seek(self._log_offset)
                return log_file.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """The end of the server's log, with our password and token masked."""
        tail = self._read_log()[-chars:]
        for secret in (self._password, self._token):
            if secret:
                tail = tail.replace(secret, "***")
        return tail

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the server process to exit; its exit code, or None if still running after the wait."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, *, timeout_s: float = 15.0) -> None:
        """SIGTERM the server's process group, wait, then SIGKILL it if it is still there. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            logger.info("stopping Label Studio (pid %s)", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "Label Studio (pid %s) ignored SIGTERM for %.0f s; killing it", proc.pid, timeout_s
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m labelling.devserver", description="A local Label Studio for tests and development."
    )
    parser.add_argument("--venv-dir", type=Path, default=None, help=f"default: {default_venv_dir()}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ensure", help="install Label Studio into its own venv (once); print where")
    serve = commands.add_parser("serve", help="run a server in the foreground until Ctrl-C")
    serve.add_argument("--port", type=int, default=None, help="default: a free port")
    serve.add_argument(
        "--data-dir", type=Path, default=None, help="database and credentials (default: a temp dir)"
    )
    serve.add_argument(
        "--document-root", type=Path, default=None, help="local files root (default: <data-dir>/files)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll is noise
    venv_dir: Path = args.venv_dir or default_venv_dir()
    try:
        executable = ensure_venv(venv_dir, progress=_print_progress)
        template_db = ensure_template_db(venv_dir, progress=_print_progress)
        if args.command == "ensure":
            print(f"label-studio {DEFAULT_VERSION} is installed: {executable}")
            print(f"its migrated empty database: {template_db}")
            return 0
        return _serve(executable, template_db, args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _serve(executable: Path, template_db: Path, args: argparse.Namespace) -> int:
    temp_dir = None if args.data_dir else tempfile.mkdtemp(prefix="defectloop-label-studio-")
    data_dir: Path = args.data_dir or Path(temp_dir or ".")

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGTERM unwinds like Ctrl-C, so the server (in a session of its own) is stopped on the way out.
    signal.signal(signal.SIGTERM, on_sigterm)
    server = LabelStudioServer(
        executable,
        data_dir=data_dir,
        document_root=args.document_root or data_dir / "files",
        port=args.port,
        template_db=template_db,
    )
    try:
        with server:
            print(f"Label Studio:  {server.url}")
            print(f"log in as:     {server.username} / {server.password}")
            print(f"API token:     {server.token}")
            print(f"data dir:      {server.data_dir}   documents: {server.document_root}")
            print("Ctrl-C stops it.", flush=True)
            code = server.wait()
            print(f"error: Label Studio exited with code {code}; see {server.log_path}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
