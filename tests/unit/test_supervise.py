"""`defectloop up`'s supervisor with real processes: restarts with back-off, stops together, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from defectloop.supervise import Backoff

ROOT = Path(__file__).resolve().parents[2]
DEFECTLOOP = str(Path(sys.executable).parent / "defectloop")
DEADLINE_S = 60.0

# A supervisor over two children that write their pid and sleep; its log goes to stderr.
SUPERVISOR = textwrap.dedent(
    """
    import logging, sys
    from defectloop.supervise import Backoff, run_processes

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = sys.argv[1]
    child = "import os, sys, time; open(sys.argv[1], 'a').write(f'{os.getpid()}\\\\n'); time.sleep(600)"
    code = run_processes(
        {name: [sys.executable, "-c", child, f"{folder}/{name}.pids"] for name in ("one", "two")},
        poll_s=0.05,
        backoff=Backoff(first_s=0.2, max_s=1.0, stable_s=30.0),
        on_restart=lambda name: print(f"hook before restarting {name}", file=sys.stderr, flush=True),
    )
    sys.exit(code)
    """
)


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited


def pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def children_of(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    process = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for("both children", lambda: bool(pids(tmp_path / "one.pids")) and bool(pids(tmp_path / "two.pids")))
    try:
        yield process, tmp_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for name in ("one", "two"):
            for pid in pids(tmp_path / f"{name}.pids"):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_a_killed_child_is_restarted_with_a_logged_reason_and_the_others_keep_running(
    supervisor: tuple[subprocess.Popen[str], Path],
) -> None:
    process, folder = supervisor
    (first,) = pids(folder / "one.pids")
    (other,) = pids(folder / "two.pids")
    os.kill(first, signal.SIGKILL)
    wait_for("the restart", lambda: len(pids(folder / "one.pids")) == 2)
    restarted = pids(folder / "one.pids")[1]
    assert restarted != first
    assert alive(restarted)
    assert alive(other)  # one crash does not stop the stack
    assert pids(folder / "two.pids") == [other]
    # A second crash soon after waits longer (back-off), and is restarted too.
    os.kill(restarted, signal.SIGKILL)
    wait_for("the second restart", lambda: len(pids(folder / "one.pids")) == 3)

    process.send_signal(signal.SIGTERM)
    _, log = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 0, log
    assert "one (pid" in log
    assert "killed by SIGKILL" in log
    assert "restarting in 0 s" in log or "restarting in 1 s" in log
    assert log.count("hook before restarting one") == 2
    assert "hook before restarting two" not in log
    assert not any(alive(pid) for name in ("one", "two") for pid in pids(folder / f"{name}.pids"))


def test_children_die_with_a_sigkilled_supervisor(supervisor: tuple[subprocess.Popen[str], Path]) -> None:
    process, folder = supervisor
    started = [*pids(folder / "one.pids"), *pids(folder / "two.pids")]
    assert all(alive(pid) for pid in started)
    process.kill()  # SIGKILL: the supervisor gets no chance to stop them
    process.wait()
    wait_for("the orphans to exit", lambda: not any(alive(pid) for pid in started))


def test_back_off_doubles_to_its_cap_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(first_s=1.0, max_s=8.0, stable_s=60.0)
    delays = []
    delay = None
    for _ in range(6):
        delay = backoff.next_delay(delay, ran_s=2.0)
        delays.append(delay)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.next_delay(8.0, ran_s=61.0) == 1.0


@pytest.mark.slow
def test_defectloop_up_restarts_a_killed_worker_and_leaves_no_orphan_when_killed(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTLOOP_")}
    env.update(DEFECTLOOP_DATA_DIR=str(tmp_path / "data"), NO_COLOR="1", COLUMNS="200", OMP_NUM_THREADS="1")
    assert (
        subprocess.run([DEFECTLOOP, "db", "upgrade"], env=env, check=False, capture_output=True).returncode
        == 0
    )
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen([DEFECTLOOP, "up"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for("worker, trainer and beat", lambda: len(children_of(up.pid)) == 3)
        before = set(children_of(up.pid))
        text = log_path.read_text()
        assert f"data dir: {tmp_path / 'data'}" in text
        worker = next(
            pid for pid in before if b"--queues=inference" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
        os.kill(worker, signal.SIGKILL)
        wait_for("up to log the worker's death", lambda: "killed by SIGKILL" in log_path.read_text())

        def restarted() -> bool:
            children = children_of(up.pid)  # one snapshot: the killed worker must be gone from this one
            return len(children) == 3 and worker not in children

        wait_for("up to restart the worker", restarted)
        survivors = set(children_of(up.pid))
        assert before - {worker} <= survivors  # trainer and beat ran on
        up.kill()  # SIGKILL: no clean-up in `up` itself
        up.wait()
        wait_for("up's children to exit with it", lambda: not any(alive(pid) for pid in survivors))
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
