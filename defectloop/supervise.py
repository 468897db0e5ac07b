"""Run defectloop's processes side by side (``defectloop up``) and stop them together.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only the supervisor, which
then sends SIGTERM to every child once: the worker finishes the batch in hand, the watcher the file in
hand. A child that exits by itself stops the others, and the supervisor reports failure.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType

logger = logging.getLogger(__name__)


def run_processes(
    commands: Mapping[str, Sequence[str]], *, poll_s: float = 0.5, stop_timeout_s: float = 60.0
) -> int:
    """Start every command, wait for SIGTERM/SIGINT or a child's exit, stop the rest; 0 if all went well.

    A child still running ``stop_timeout_s`` after its SIGTERM is killed (and the result is 1).
    """
    stop = threading.Event()

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received; stopping %s", signal.Signals(signum).name, ", ".join(commands))
        stop.set()

    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    children: dict[str, subprocess.Popen[bytes]] = {}
    code = 0
    try:
        for name, command in commands.items():
            children[name] = subprocess.Popen(list(command), start_new_session=True)
            logger.info("started %s (pid %d)", name, children[name].pid)
        while not stop.is_set():
            for name, child in children.items():
                if child.poll() is not None:
                    logger.error("%s exited with %s; stopping the others", name, child.returncode)
                    code = 1
                    stop.set()
                    break
            stop.wait(poll_s)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout_s
        for name, child in children.items():
            try:
                returned = child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("%s did not stop within %.0fs; killing it", name, stop_timeout_s)
                child.kill()
                child.wait()
                code = 1
                continue
            if returned != 0:
                code = 1
            logger.info("%s stopped (exit %s)", name, returned)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
