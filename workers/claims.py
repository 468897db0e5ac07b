"""Which worker process holds an image, and re-publishing what a dead one held.

A worker that takes an image to classify it (``new -> queued``, or a ``queued`` image named by its
message) records itself on the row as a `Claimant`: the machine (host name and boot id), the process
(pid and its start time, so a pid reused after a restart is not mistaken for the old process) and the
Celery node name, for people. A worker killed mid-batch leaves its images ``queued`` with its claim, and
no broker hands their messages out again soon (the embedded broker never does, Redis after the
visibility timeout): `republish_orphaned_claims` finds the claims of processes that no longer exist on
this machine, clears them (compare-and-set, so two starting workers do not both re-publish an image) and
publishes the images again. Claims of live processes, and of processes on other machines (whose
liveness cannot be seen from here), are left alone: the sweeper's ``stuck_after`` still covers those.

The worker calls it once it is ready; ``defectloop up`` calls it after restarting a worker.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db import repositories as repo
from db.session import session_scope

logger = logging.getLogger(__name__)

__all__ = ["Claimant", "republish_orphaned_claims"]

_SEPARATOR = ":"


@cache
def _boot_id() -> str:
    """This machine's boot id (Linux): pids and process start times are only comparable within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), or None if there is no such process.

    Without /proc (not Linux), 0 for any live process: the pid alone then tells.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return _start_without_proc(pid)
    # The command name (field 2) is in parentheses and may hold spaces: fields count from the last ")".
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22, starttime
    except (IndexError, ValueError):
        return 0


def _start_without_proc(pid: int) -> int | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return 0  # exists, owned by someone else
    return 0


@dataclass(frozen=True)
class Claimant:
    """A worker process, as stored in ``images.claimed_by``: ``host:boot:pid:start:node``."""

    host: str
    boot: str
    pid: int
    start: int
    node: str = ""

    @classmethod
    def current(cls, node: str = "") -> Claimant:
        """This process (``node``: the Celery worker's node name, when known)."""
        pid = os.getpid()
        return cls(socket.gethostname(), _boot_id(), pid, _start_ticks(pid) or 0, node)

    @classmethod
    def parse(cls, text: str) -> Claimant | None:
        """The claimant stored as ``text``, or None when it is not one (never raises)."""
        parts = text.split(_SEPARATOR, 4)
        if len(parts) < 4:
            return None
        host, boot, pid, start = parts[:4]
        try:
            return cls(host, boot, int(pid), int(start), parts[4] if len(parts) == 5 else "")
        except ValueError:
            return None

    def __str__(self) -> str:
        return _SEPARATOR.join((self.host, self.boot, str(self.pid), str(self.start), self.node))

    def is_alive(self) -> bool | None:
        """True if the process still runs, False if it is gone, None if this machine cannot tell (the
        claim was made on another machine, or in another container: another host name)."""
        if self.host != socket.gethostname():
            return None
        if self.boot != _boot_id():
            return False  # this machine rebooted since: every process of that boot is gone
        start = _start_ticks(self.pid)
        if start is None:
            return False
        return start == self.start or self.start == 0 or start == 0


def republish_orphaned_claims(
    *,
    sessions: sessionmaker[Session],
    publish: Callable[[list[int]], None],
    batch_size: int = 64,
    is_alive: Callable[[Claimant], bool | None] = Claimant.is_alive,
    limit: int = 100_000,
) -> list[int]:
    """Publish again the ``queued`` images claimed by worker processes that no longer exist; their ids.

    A claim whose process is alive, or on another machine (``is_alive`` says None), is left alone; an
    unreadable claim is treated as gone. Each dead claim is cleared (compare-and-set on the claimant: of
    two workers starting at once one re-publishes an image, and an image another worker took meanwhile
    is left to it), then the ids are published, ``batch_size`` per message. Should a publish fail, the
    cleared images wait for the sweeper (they are ``queued``, their clock restarted); a duplicate
    message is harmless (classification is idempotent).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with session_scope(sessions) as session:
        claimed = repo.find_claimed_images(session=session, limit=limit)
    # Liveness is looked up outside any transaction (on SQLite every transaction holds the write lock).
    verdicts: dict[str, bool | None] = {}
    dead: dict[str, list[int]] = {}
    for image_id, text in claimed:
        if text not in verdicts:
            claimant = Claimant.parse(text)
            verdicts[text] = False if claimant is None else is_alive(claimant)
        if verdicts[text] is False:
            dead.setdefault(text, []).append(image_id)
    if not dead:
        logger.info("no orphaned claims: nothing to re-publish")
        return []
    with session_scope(sessions) as session:
        # Compare-and-set on the claimant: an image another worker took meanwhile is left to it.
        released = sorted(
            image_id
            for text, ids in dead.items()
            for image_id in repo.release_claims(session=session, image_ids=ids, claimant=text)
        )
    for start in range(0, len(released), batch_size):
        publish(released[start : start + batch_size])
    logger.warning(
        "re-published %d orphaned image(s) held by %d worker process(es) that no longer exist: %s",
        len(released),
        len(dead),
        ", ".join(sorted(dead)),
        extra={"image_ids": released[:50]},
    )
    return released
