"""Run defectloop's processes side by side (``defectloop up``), keep them running, stop them together.

- Each child runs in its own session, so a Ctrl-C in the terminal reaches only the supervisor, which
  then sends SIGTERM to every child once: the worker finishes the batch in hand, the watcher the file in
  hand.
- A child that exits (or is killed) is started again after a back-off (1 s, doubling up to a minute;
  back to 1 s once it has run a minute), and each exit and restart is logged. One child's crash does
  not stop the others. ``on_restart(name)`` runs before a restart (e.g. re-publish a dead worker's claims).
- Children die with the supervisor: each asks the kernel (``PR_SET_PDEATHSIG``) for SIGTERM when its
  parent dies, so even a SIGKILLed ``up`` leaves no orphans behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


@dataclass(frozen=True)
class Backoff:
    """How long to wait before restarting a child that exited: doubling from ``first_s`` to ``max_s``,
    back to ``first_s`` after it ran ``stable_s`` without exiting."""

    first_s: float = 1.0
    max_s: float = 60.0
    stable_s: float = 60.0

    def next_delay(self, previous_s: float | None, ran_s: float) -> float:
        if previous_s is None or ran_s >= self.stable_s:
            return self.first_s
        return min(self.max_s, previous_s * 2)


class _Child:
    def __init__(self, name: str, command: Sequence[str]) -> None:
        self.name = name
        self.command = list(command)
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.delay_s: float | None = None
        self.restart_at: float | None = None
        self.restarts = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, start_new_session=True, preexec_fn=_die_with_parent(os.getpid())
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        logger.info("started %s (pid %d)", self.name, self.process.pid)


def run_processes(
    commands: Mapping[str, Sequence[str]],
    *,
    poll_s: float = 0.5,
    stop_timeout_s: float = 60.0,
    backoff: Backoff | None = None,
    on_restart: Callable[[str], None] | None = None,
) -> int:
    """Start every command, restart those that exit, until SIGTERM/SIGINT; then stop all. 0 if all
    stopped cleanly; 1 if one had to be killed or exited with an error while stopping."""
    backoff = backoff or Backoff()
    stop = threading.Event()

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received; stopping %s", signal.Signals(signum).name, ", ".join(commands))
        stop.set()

    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    children = [_Child(name, command) for name, command in commands.items()]
    try:
        for child in children:
            child.start()
        while not stop.is_set():
            now = time.monotonic()
            for child in children:
                _watch(child, now, backoff, on_restart)
            stop.wait(poll_s)
    finally:
        code = _stop_all(children, stop_timeout_s)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _watch(child: _Child, now: float, backoff: Backoff, on_restart: Callable[[str], None] | None) -> None:
    if child.restart_at is not None:
        if now >= child.restart_at:
            child.restarts += 1
            if on_restart is not None:
                try:
                    on_restart(child.name)
                except Exception:
                    logger.exception(
                        "before restarting %s: the restart hook failed; restarting anyway", child.name
                    )
            logger.warning("restarting %s (restart %d)", child.name, child.restarts)
            child.start()
        return
    assert child.process is not None
    returned = child.process.poll()
    if returned is None:
        return
    ran_s = now - child.started_at
    child.delay_s = backoff.next_delay(child.delay_s, ran_s)
    child.restart_at = now + child.delay_s
    how = f"killed by {signal.Signals(-returned).name}" if returned < 0 else f"exited with {returned}"
    logger.error(
        "%s (pid %d) %s after %.1f s; restarting in %.0f s",
        child.name,
        child.process.pid,
        how,
        ran_s,
        child.delay_s,
    )


def _stop_all(children: Sequence[_Child], stop_timeout_s: float) -> int:
    code = 0
    running = [c for c in children if c.process is not None and c.process.poll() is None]
    for child in running:
        assert child.process is not None
        child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + stop_timeout_s
    for child in running:
        assert child.process is not None
        try:
            returned = child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("%s did not stop within %.0fs; killing it", child.name, stop_timeout_s)
            child.process.kill()
            child.process.wait()
            code = 1
            continue
        if returned not in (0, -signal.SIGTERM):  # killed by the SIGTERM we sent is a clean stop too
            code = 1
        logger.info("%s stopped (exit %s)", child.name, returned)
    return code
