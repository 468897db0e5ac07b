"""``defectloop doctor``: which services are reachable, which are missing, and the setting to change."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

import httpx

from db.errors import DatabaseError
from db.migrate import current_revision, head_revision
from db.session import check_connection, create_engine_for
from defectloop.settings import Settings, env_name, redact_url

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    OK = "ok"
    MISSING = "missing"
    WARNING = "warning"


@dataclass(frozen=True)
class CheckResult:
    """One line of the doctor's report."""

    component: str
    setting: str
    target: str
    outcome: Outcome
    detail: str
    required: bool = True


def run_checks(settings: Settings, *, timeout_s: float = 3.0) -> list[CheckResult]:
    """Run every check; never raises for an unreachable service (that is what it reports)."""
    return [
        check_database(settings),
        check_broker(settings, timeout_s=timeout_s),
        check_label_studio(settings, timeout_s=timeout_s),
        check_webhook_secret(settings),
    ]


def check_database(settings: Settings) -> CheckResult:
    setting = env_name("database_url")
    target = redact_url(settings.database_url)
    if settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine_for(settings.database_url)
    try:
        check_connection(engine)
        current = current_revision(engine)
        head = head_revision()
    except DatabaseError as exc:
        return CheckResult("database", setting, target, Outcome.MISSING, str(exc))
    finally:
        engine.dispose()
    if current != head:
        at = current or "no revision"
        detail = f"reachable, schema at {at} but the code needs {head}: run `defectloop db upgrade`"
        return CheckResult("database", setting, target, Outcome.MISSING, detail)
    return CheckResult("database", setting, target, Outcome.OK, f"reachable, schema at {head}")


def check_broker(settings: Settings, *, timeout_s: float) -> CheckResult:
    # kombu is imported here, not at module level: `defectloop --help` should not pay for it.
    from kombu import Connection

    setting = env_name("broker_url")
    target = redact_url(settings.broker_url)
    if settings.broker_url.startswith("sqla+sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with Connection(settings.broker_url, connect_timeout=timeout_s) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout_s)
    except Exception as exc:  # kombu and its transports raise many unrelated types
        return CheckResult(
            "broker",
            setting,
            target,
            Outcome.MISSING,
            f"unreachable ({type(exc).__name__}); start it or change {setting}",
        )
    kind = "embedded (SQLite file, no server)" if settings.broker_url.startswith("sqla+") else "reachable"
    return CheckResult("broker", setting, target, Outcome.OK, kind)


def check_label_studio(settings: Settings, *, timeout_s: float) -> CheckResult:
    setting = env_name("label_studio_url")
    target = redact_url(settings.label_studio_url)
    base = settings.label_studio_url.rstrip("/")
    # Label Studio is needed for human labelling; the embedded demo runs without it.
    try:
        health = httpx.get(f"{base}/health/", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return CheckResult(
            "label studio",
            setting,
            target,
            Outcome.MISSING,
            f"unreachable ({type(exc).__name__}); start Label Studio or change {setting}",
            required=False,
        )
    if health.status_code != 200:
        detail = f"answered /health/ with HTTP {health.status_code}; is {setting} a Label Studio server?"
        return CheckResult("label studio", setting, target, Outcome.MISSING, detail, required=False)
    key_setting = env_name("label_studio_api_key")
    if settings.label_studio_api_key is None:
        detail = f"reachable, but no API key: set {key_setting}"
        return CheckResult("label studio", key_setting, target, Outcome.WARNING, detail, required=False)
    token = settings.label_studio_api_key.get_secret_value()
    try:
        who = httpx.get(
            f"{base}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        return CheckResult(
            "label studio",
            key_setting,
            target,
            Outcome.MISSING,
            f"API unreachable ({type(exc).__name__})",
            False,
        )
    if who.status_code in (401, 403):
        detail = f"reachable, but the API key was refused (HTTP {who.status_code}): check {key_setting}"
        return CheckResult("label studio", key_setting, target, Outcome.MISSING, detail, required=False)
    if who.status_code != 200:
        detail = f"reachable, but the API answered HTTP {who.status_code}"
        return CheckResult("label studio", key_setting, target, Outcome.WARNING, detail, required=False)
    return CheckResult("label studio", key_setting, target, Outcome.OK, "reachable, API key accepted", False)


def check_webhook_secret(settings: Settings) -> CheckResult:
    setting = env_name("webhook_secret")
    if settings.webhook_secret is None or not settings.webhook_secret.get_secret_value():
        detail = f"not set: the webhook receiver refuses to start without it; set {setting}"
        return CheckResult("webhook secret", setting, "-", Outcome.WARNING, detail, required=False)
    if len(settings.webhook_secret.get_secret_value()) < 16:
        detail = f"set but short (under 16 characters); use a long random value for {setting}"
        return CheckResult("webhook secret", setting, "-", Outcome.WARNING, detail, required=False)
    return CheckResult("webhook secret", setting, "-", Outcome.OK, "set", required=False)
