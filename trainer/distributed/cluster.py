"""Joining (or starting) the Ray cluster for ``--ray local|HOST:PORT``, with a clear error when it cannot be reached."""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from marlctl.trainer.distributed.errors import ClusterError

HEAD_HINT = ("start a head with `ray start --head --port=6379` (and `ray start --address=HEAD:6379` on each worker "
             "machine), then pass --ray HEAD:6379; or use --ray local to run the workers on this machine")


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port), or a ``ClusterError`` saying what is valid."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--ray {address!r} is not an address; valid: local, or HOST:PORT of a Ray head "
                           f"(e.g. 10.0.0.5:6379)")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` when nothing listens at ``address`` (Ray itself would retry for minutes)."""
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return
        except OSError as exc:
            last = exc
            if isinstance(exc, socket.gaierror):
                break  # an unknown host name will not start resolving
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    reason = last.strerror if last is not None and last.strerror else type(last).__name__
    raise ClusterError(f"cannot reach a Ray head at {address} ({reason}, waited {timeout_s:g} s): {HEAD_HINT}")


WORKER_NICENESS_ENV = "RAY_worker_niceness"


def local_workers_at_normal_priority() -> None:
    """Run the Ray instance this process starts with its workers at niceness 0 (unless the user set
    ``RAY_worker_niceness``). Ray's default, 15, lets anything else on the machine - the learner on the
    driver, other jobs - starve the rollout workers, which are the hot path here: under a load of 2 on 2 cores
    one worker collected smax:3m at 0.1x the same loop run in the driver (bench/distributed.py)."""
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")


def connect(address: str, timeout_s: float) -> Callable[[], None]:
    """Connect this process to Ray; returns the matching disconnect. ``local`` starts Ray here; ``auto`` joins
    the cluster this machine belongs to (a Ray job's driver: ``RAY_ADDRESS``, or a node's ``ray start``); an
    already connected process (a bench or test that joined a cluster itself) is reused and left connected."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs Ray on this machine: pip install 'marlctl[train]' (ray 2.60.0)") from None
    if ray.is_initialized():
        return lambda: None
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
              "configure_logging": True}
    if address == "local":  # a new instance even where `ray start` or another job already runs one
        local_workers_at_normal_priority()
        ray.init(address="local", **kwargs)
    else:
        if address != "auto":
            check_reachable(address, timeout_s)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}; "
                               f"{HEAD_HINT}") from None
    return ray.shutdown
