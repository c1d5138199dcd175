"""Errors of the distributed path; each is a ``TrainerError`` (one line, CLI exit 2) naming what to do."""
from __future__ import annotations

from marlctl.trainer.errors import TrainerError


class ClusterError(TrainerError):
    """The Ray cluster cannot be used: unreachable address, Ray not installed, no room for the workers."""


class WorkerError(TrainerError):
    """A rollout worker cannot go on: its env failed to build, or it failed ``max_worker_failures`` times in a row."""


class VersionMismatchError(TrainerError):
    """The learner and a worker run different marlctl versions."""
