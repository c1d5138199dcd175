"""Kill -9 a `marlctl train` process at seeded random moments after each new checkpoint, then `--resume` it:
the loop that the local (test_checkpoints.py) and the Ray (test_distributed.py) kill tests share."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


def kill_and_resume(
    argv: Callable[[int], list[str]], latest_pt: Path, rng: random.Random, starts: int, max_delay_s: float,
    checkpoint_timeout_s: float = 120.0,
) -> None:
    """Start ``argv(0)``; after each new ``latest_pt`` wait ``U(0, max_delay_s)`` and SIGKILL the process, then
    start ``argv(k)`` (a resume) - at most ``starts`` processes, the last never killed. Fails the test if no
    kill happened, a process dies of anything but SIGKILL, or the last one does not end with 0."""
    env = {**os.environ, "COLUMNS": "200"}
    kills, err = 0, ""
    for start in range(starts):
        before = _mtime(latest_pt)
        proc = subprocess.Popen(argv(start), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + checkpoint_timeout_s
        while _mtime(latest_pt) == before and proc.poll() is None:
            assert time.monotonic() < deadline, f"no new checkpoint within {checkpoint_timeout_s:.0f} s"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, max_delay_s))
        if proc.poll() is None and start < starts - 1:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        err = proc.communicate(timeout=300)[1].decode()
        if proc.returncode == 0:
            assert kills >= 1, "the run ended before any kill: nothing was tested"
            return
        assert proc.returncode == -signal.SIGKILL, err
    raise AssertionError(f"the run did not finish within {starts} starts: {err}")
