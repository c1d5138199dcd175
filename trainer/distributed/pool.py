"""The learner's side of the rollout workers: Ray actors, weight versions, task bookkeeping, faults.

``WorkerPool`` starts ``rollout_workers`` actors (spread over the cluster's nodes, ``max_restarts=-1`` so
Ray restarts a worker whose process is killed or whose node leaves), publishes each new weight version
ONCE with ``ray.put`` and hands workers the reference, and turns every way a task can end into one of:
a result (tagged with worker, version, task), or a dropped task counted by reason (``worker_lost``: the
process or node died; ``worker_error``: the worker raised, its traceback is logged and the actor is
restarted). A worker that fails ``max_worker_failures`` tasks in a row, or whose env fails to build,
stops the run with that worker's own error message.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from marlctl.trainer.config import TrainConfig
from marlctl.trainer.distributed.errors import ClusterError, VersionMismatchError, WorkerError
from marlctl.trainer.distributed.worker import RolloutWorkerActor, marlctl_version

STARTUP_TIMEOUT_S = 600.0
"""Longest wait for a worker to build its env and networks (GRF engines, JAX compiles on a busy node)."""
RECOVERY_TIMEOUT_S = 300.0
"""Longest wait for Ray to restart a failed worker (a new process, or a new node for it) and rebuild it."""
SETTLE_TIMEOUT_S = 60.0
"""Longest wait, once the budget is reached, for the tasks still in flight to finish or fail (``settle``)."""


@dataclass
class Task:
    """One call in flight on a worker."""

    worker: int
    call: str  # "collect" | "evaluate" | "info"
    version: int = -1
    task: int = -1
    planned_episodes: int = 0
    """Episodes lost when this task is lost (a worker's envs; evaluation shares are retried, not counted)."""
    n_episodes: int = 0  # evaluate: this worker's share


@dataclass
class PoolCounters:
    """Fault and throughput counters (checkpointed, so they survive a resume)."""

    worker_restarts: int = 0
    episodes_dropped: dict[str, int] = field(default_factory=dict)
    env_steps: dict[str, int] = field(default_factory=dict)  # accepted env steps by worker index
    tasks: int = 0  # collect tasks handed out so far: seeds the next task's envs

    def drop(self, reason: str, episodes: int) -> None:
        self.episodes_dropped[reason] = self.episodes_dropped.get(reason, 0) + episodes

    def to_dict(self) -> dict[str, Any]:
        return {"worker_restarts": self.worker_restarts, "episodes_dropped": dict(self.episodes_dropped),
                "env_steps": dict(self.env_steps), "tasks": self.tasks}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PoolCounters:
        return cls(int(d["worker_restarts"]), {str(k): int(v) for k, v in d["episodes_dropped"].items()},
                   {str(k): int(v) for k, v in d["env_steps"].items()}, int(d["tasks"]))


def _first_line(exc: BaseException) -> str:
    """One line about ``exc``: for an error Ray reports with a remote traceback, its last ``SomeError: ...`` line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    raised = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*:", ln)]
    return raised[-1] if len(lines) > 1 and raised else lines[0]


def worker_error(w: int, exc: BaseException) -> Exception:
    """The run-stopping error for worker ``w``'s failed call: the worker's own exception, in one line."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, VersionMismatchError):
        return VersionMismatchError(str(cause))
    return WorkerError(f"rollout worker {w} failed: {type(cause).__name__}: {_first_line(cause)}")


class WorkerPool:
    """``n`` rollout-worker actors and everything in flight on them."""

    def __init__(self, cfg: TrainConfig, kind: str, log: Callable[..., None]) -> None:
        import ray

        self.ray, self.cfg, self.kind, self.log = ray, cfg, kind, log
        self.n = cfg.ray.rollout_workers
        self.envs_per_worker = cfg.ray.envs_per_worker or cfg.env.num_envs
        self.counters = PoolCounters()
        self.pending: dict[Any, Task] = {}
        self.failures = [0] * self.n  # consecutive failed tasks per worker
        self.pids: list[int | None] = [None] * self.n
        self.recovering: dict[int, tuple[float, str]] = {}  # worker -> (when it started coming back, why)
        self.retry_at: dict[int, float] = {}  # worker -> when to ask a restarting worker again
        self.weights_version = -1
        self.weights_ref: Any = None
        need = self.n * cfg.ray.worker_cpus
        have = float(ray.cluster_resources().get("CPU", 0.0))
        if need > have:
            raise ClusterError(f"{self.n} rollout workers x {cfg.ray.worker_cpus:g} CPUs = {need:g} CPUs, but the Ray "
                               f"cluster has {have:g}: add nodes (ray start --address=...), or lower "
                               "--rollout-workers / --worker-cpus")
        remote_cls = ray.remote(max_restarts=-1, max_task_retries=0)(RolloutWorkerActor)
        sections = cfg.to_dict()
        self.actors = [remote_cls.options(num_cpus=cfg.ray.worker_cpus, scheduling_strategy="SPREAD")
                       .remote(sections, w, marlctl_version()) for w in range(self.n)]
        self._start()

    # ------------------------------------------------------------ start-up

    def _start(self) -> None:
        """Build every worker's env and networks; a failure stops the run with the worker's own message."""
        refs = [a.info.remote() for a in self.actors]
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for w, ref in enumerate(refs):
            try:
                info = self.ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
            except self.ray.exceptions.GetTimeoutError:
                raise WorkerError(f"rollout worker {w} did not start within {STARTUP_TIMEOUT_S:.0f} s (is its node "
                                  "overloaded, or does building the env hang?)") from None
            except self.ray.exceptions.RayTaskError as exc:
                raise worker_error(w, exc) from None
            except self.ray.exceptions.RayActorError as exc:
                raise WorkerError(f"rollout worker {w} died while starting: {_first_line(exc)}") from None
            self.pids[w] = info["pid"]
            self.log("worker_start", **info)

    # ------------------------------------------------------------ weights

    def publish(self, version: int, weights: Callable[[], Any]) -> None:
        """One ``ray.put`` per new version (the previous version's object is released with its last task)."""
        if version != self.weights_version:
            self.weights_ref = self.ray.put(weights())
            self.weights_version = version

    # ------------------------------------------------------------ submitting

    def alive(self) -> list[int]:
        return [w for w in range(self.n) if w not in self.recovering]

    def in_flight(self, w: int, call: str | None = None) -> int:
        return sum(t.worker == w and (call is None or t.call == call) for t in self.pending.values())

    def busy(self, w: int, call: str | None = None) -> bool:
        return self.in_flight(w, call) > 0

    def submit_collect(self, w: int, epsilon: float) -> None:
        task = self.counters.tasks
        self.counters.tasks += 1
        ref = self.actors[w].collect.remote([self.weights_ref], self.weights_version, task, float(epsilon))
        self.pending[ref] = Task(w, "collect", self.weights_version, task, self.envs_per_worker)

    def submit_evaluate(self, w: int, n_episodes: int) -> None:
        ref = self.actors[w].evaluate.remote([self.weights_ref], self.weights_version, n_episodes)
        self.pending[ref] = Task(w, "evaluate", self.weights_version, n_episodes=n_episodes)

    # ------------------------------------------------------------ waiting

    def wait(self, timeout: float | None = None) -> list[tuple[Task, Any]]:
        """Results of the calls that finished (at least one unless ``timeout``); failed calls are counted,
        their workers recovered, and they come back as ``(task, None)`` so the caller can re-plan."""
        self._ask_restarting()
        if not self.pending and not self.retry_at:
            return []
        if self.retry_at:  # wake up for the next question to a restarting worker
            until = max(0.0, min(self.retry_at.values()) - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        if not self.pending:
            time.sleep(timeout or 0.0)
            return []
        done, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        if done:  # everything else that is already finished, without waiting
            more, _ = self.ray.wait([r for r in self.pending if r not in done], num_returns=len(self.pending) - 1,
                                    timeout=0) if len(self.pending) > 1 else ([], [])
            finished = {*done, *more}
            done = [r for r in self.pending if r in finished]  # in submission order: a worker's running task first
        out: list[tuple[Task, Any]] = []
        for ref in done:
            task = self.pending.pop(ref)
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.RayTaskError as exc:
                self._on_raise(task, exc)
                out.append((task, None))
                continue
            except self.ray.exceptions.RayActorError as exc:
                if task.call == "info":
                    self._still_restarting(task.worker, exc)
                    continue
                self._on_lost(task, exc)
                out.append((task, None))
                continue
            if task.call == "info":
                self._on_recovered(task.worker, result)
                continue
            self.failures[task.worker] = 0
            if result.get("pid") not in (None, self.pids[task.worker]):  # died and came back between two calls
                self.counters.worker_restarts += 1
                self.log("worker_restart", worker=task.worker, pid=result["pid"], old_pid=self.pids[task.worker])
                self.pids[task.worker] = result["pid"]
            out.append((task, result))
        return out

    def _fail(self, task: Task, reason: str, exc: BaseException, traceback: str | None) -> None:
        """Count the lost task, and the restart Ray now makes (``max_restarts=-1``: a failed actor always comes
        back); the worker takes tasks again once its restarted process answers ``info``."""
        w = task.worker
        queued = w in self.recovering  # queued on the process that already failed: lost with it, no second restart
        if queued:
            reason, message, traceback = self.recovering[w][1], f"queued on worker {w} when it failed", None
        else:
            message = _first_line(exc)
            self.failures[w] += 1
            self.counters.worker_restarts += 1
        dropped = task.planned_episodes if task.call == "collect" else 0
        if task.call == "collect":
            self.counters.drop(reason, dropped)
        self.log("worker_failure", worker=w, reason=reason, call=task.call, task=task.task, queued=queued,
                 episodes_dropped=dropped, message=message, traceback=traceback)
        if queued:
            return
        if self.failures[w] >= self.cfg.ray.max_worker_failures:
            raise WorkerError(f"rollout worker {w} failed {self.failures[w]} tasks in a row (ray.max_worker_failures="
                              f"{self.cfg.ray.max_worker_failures}); last: {_first_line(exc)}")
        self.recovering[w] = (time.monotonic(), reason)
        self._ask(w)

    def _ask(self, w: int) -> None:
        """Ask worker ``w`` where it runs: answered by the restarted process once its env is rebuilt."""
        self.pending[self.actors[w].info.remote()] = Task(w, "info")

    def _ask_restarting(self) -> None:
        now = time.monotonic()
        for w, at in list(self.retry_at.items()):
            if at <= now:
                del self.retry_at[w]
                self._ask(w)

    def _still_restarting(self, w: int, exc: BaseException) -> None:
        """The question reached the actor while Ray restarts it: ask again shortly, up to ``RECOVERY_TIMEOUT_S``."""
        if time.monotonic() - self.recovering[w][0] > RECOVERY_TIMEOUT_S:
            raise WorkerError(f"rollout worker {w} did not come back within {RECOVERY_TIMEOUT_S:.0f} s of its "
                              f"failure: {_first_line(exc)}")
        self.retry_at[w] = time.monotonic() + 0.2

    def _on_raise(self, task: Task, exc: BaseException) -> None:
        """The worker raised: log the traceback, restart the actor (fresh env state), count the task's episodes."""
        cause = getattr(exc, "cause", None)
        if isinstance(cause, VersionMismatchError):
            raise VersionMismatchError(str(cause))
        if task.worker not in self.recovering:
            self.ray.kill(self.actors[task.worker], no_restart=False)
        self._fail(task, "worker_error", cause or exc, str(exc))

    def _on_lost(self, task: Task, exc: BaseException) -> None:
        """The worker's process or node died: Ray restarts the actor; the task's episodes are gone."""
        self._fail(task, "worker_lost", exc, None)

    def _on_recovered(self, w: int, info: dict[str, Any]) -> None:
        if info["pid"] == self.pids[w]:  # answered by the old process before the kill landed: not back yet
            self.retry_at[w] = time.monotonic() + 0.2
            return
        since = self.recovering.pop(w, (time.monotonic(), ""))[0]
        self.log("worker_restart", worker=w, pid=info["pid"], old_pid=self.pids[w],
                 seconds=round(time.monotonic() - since, 3))
        self.pids[w] = info["pid"]

    def settle(self, timeout_s: float = SETTLE_TIMEOUT_S) -> int:
        """At the end of a run, wait (bounded) for the tasks still in flight: one lost in the run's last moments
        is logged and counted like any other, not silently cleared by ``close``. Finished collect results are
        past the budget and are discarded; returns how many."""
        deadline, discarded = time.monotonic() + timeout_s, 0
        while any(t.call != "info" for t in self.pending.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            discarded += sum(1 for task, result in self.wait(timeout=left)
                             if task.call == "collect" and result is not None)
        return discarded

    # ------------------------------------------------------------ evaluation

    def evaluate(self, n_episodes: int, on_result: Callable[[Task, Any], None]) -> list[dict[str, float]]:
        """Greedy evaluation split over the live workers (a lost share is re-run elsewhere). Collect results that
        arrive meanwhile go to ``on_result``."""
        todo = self._shares(n_episodes)
        results: list[dict[str, float]] = []
        while todo or any(t.call == "evaluate" for t in self.pending.values()):
            for w in [w for w in self.alive() if not self.busy(w, "evaluate")]:
                if not todo:
                    break
                self.submit_evaluate(w, todo.pop())
            if not self.pending and not self.retry_at:
                raise WorkerError("no rollout worker is alive to evaluate")
            for task, result in self.wait():
                if task.call == "evaluate":
                    if result is None:
                        todo.append(task.n_episodes)
                    else:
                        results.append(result)
                else:
                    on_result(task, result)
        return results

    def _shares(self, n: int) -> list[int]:
        k = max(1, min(self.n, n))
        return [n // k + (1 if i < n % k else 0) for i in range(k)]

    # ------------------------------------------------------------ end

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - the cluster may already be gone
                pass
        self.pending.clear()
