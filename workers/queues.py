"""The Celery queues, and the upkeep of the embedded broker's message table.

kombu's SQLAlchemy transport (the embedded broker, ``sqla+sqlite:///…/broker.db``) never deletes a
message: handing one out only marks its row invisible (and stamps its ``timestamp`` column with the
local time), and acknowledging it does nothing. Without upkeep ``broker.db`` grows by one row per
message for ever. ``purge_delivered_messages`` deletes the rows of messages handed out longer ago than
``KEEP_DELIVERED``: the transport never looks at an invisible row again (it redelivers nothing, the
sweeper re-publishes what a dead worker held), so deleting one changes no behaviour. The freed pages
are reused by later messages, so the file stops growing. It runs when a worker starts and on beat.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, DateTime, column, create_engine, delete, false, inspect, table

logger = logging.getLogger(__name__)

__all__ = [
    "KEEP_DELIVERED",
    "PURGE_INTERVAL_S",
    "Queue",
    "add_routes_and_beat",
    "idempotent_task_options",
    "is_embedded_broker",
    "purge_delivered_messages",
]

EMBEDDED_PREFIX = "sqla+"
KEEP_DELIVERED = timedelta(minutes=10)
"""Rows of delivered messages are kept this long (for a look at what a worker just took), then deleted."""
PURGE_INTERVAL_S = 600.0
"""How often beat purges the embedded broker's delivered messages."""
MESSAGE_TABLE = "kombu_message"  # kombu's default ``message_tablename``

_messages = table(MESSAGE_TABLE, column("visible", Boolean), column("timestamp", DateTime))


class Queue(StrEnum):
    """Queue names; a worker consumes the ones it is started with (``defectloop worker --queues``)."""

    INFERENCE = "inference"
    """Classification of new images in batches with the champions; short, CPU-bound, idempotent."""

    LABELLING = "labelling"
    """Label Studio traffic: pushing tasks, recording annotations; waits on a remote service."""

    TRAINING = "training"
    """Training and evaluating challengers; long, one at a time per worker."""

    MAINTENANCE = "maintenance"
    """Beat's periodic jobs: re-queueing images that wait or got stuck, reconciliation."""


def idempotent_task_options(
    retry_on: tuple[type[Exception], ...], *, max_retries: int, backoff_max_s: int = 60
) -> dict[str, Any]:
    """``app.task`` options of a task that is safe to run twice: late acks, redelivery when its worker
    dies, retries with jittered backoff for ``retry_on`` only (transient errors, never bad input), and
    not shared (each app keeps its own tasks: a shared task would run another app's closure)."""
    return {
        "shared": False,
        "acks_late": True,
        "reject_on_worker_lost": True,
        "autoretry_for": retry_on,
        "retry_backoff": True,
        "retry_backoff_max": backoff_max_s,
        "retry_jitter": True,
        "max_retries": max_retries,
    }


def add_routes_and_beat(
    app: Any, queues: Mapping[str, Queue], beat: Mapping[str, tuple[str, float, Queue]]
) -> None:
    """Route each task of ``queues`` to its queue and add ``beat``'s entries (entry name -> (task,
    interval in seconds, queue)) to ``app``'s beat schedule, keeping the routes and entries already there."""
    routes = dict(app.conf.task_routes or {})
    routes.update({name: {"queue": queue.value} for name, queue in queues.items()})
    schedule = dict(app.conf.beat_schedule or {})
    for entry, (task, interval_s, queue) in beat.items():
        schedule[entry] = {"task": task, "schedule": interval_s, "options": {"queue": queue.value}}
    app.conf.update(task_routes=routes, beat_schedule=schedule)


def is_embedded_broker(broker_url: str) -> bool:
    """Whether ``broker_url`` is kombu's SQLAlchemy transport (``sqla+<database url>``)."""
    return broker_url.startswith(EMBEDDED_PREFIX)


def purge_delivered_messages(
    broker_url: str, *, older_than: timedelta = KEEP_DELIVERED, now: datetime | None = None
) -> int:
    """Delete the embedded broker's rows of messages handed out more than ``older_than`` ago; how many.

    Messages not handed out yet are never touched. Any other broker (Redis deletes what it delivers)
    and a broker database without the table yet: 0, nothing done. ``now`` is naive local time, as
    kombu stamps the rows (default: the current time).
    """
    if not is_embedded_broker(broker_url):
        return 0
    cutoff = (now or datetime.now()) - older_than
    engine = create_engine(broker_url.removeprefix(EMBEDDED_PREFIX))
    try:
        if not inspect(engine).has_table(MESSAGE_TABLE):
            return 0
        with engine.begin() as connection:
            result = connection.execute(
                delete(_messages).where(_messages.c.visible == false(), _messages.c.timestamp < cutoff)
            )
            deleted = int(result.rowcount or 0)
    finally:
        engine.dispose()
    if deleted:
        logger.info("embedded broker: deleted %d delivered message row(s) older than %s", deleted, older_than)
    return deleted
