"""Where the learner's experience comes from on the Ray path: the two collection disciplines.

* ``AsyncEpisodeSource`` (value methods) stands in for the learner's ``RolloutWorker``: every live worker
  always has ``ray.tasks_per_worker`` collect tasks queued (topped up with the newest weights the moment one
  finishes, so collection runs while the learner updates, and with 2 a worker never waits for the learner to
  fetch its last result); each learner iteration takes ONE finished task
  (first finished, first taken) into the replay buffer, and a task whose policy version is more than
  ``max_policy_lag`` versions behind the learner's is dropped and counted.
* ``SyncRolloutSource`` (MAPPO, TAD-PPO) stands in for ``_collect``: one on-policy iteration = one task
  on every worker with the current version, joined along the env axis; a lost task is re-run on its
  restarted worker, and a result of any other version is dropped (``stale_version``), so every batch
  comes from the current policy.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch
from marlctl.envs.base import EnvSpec
from marlctl.trainer.distributed.pool import Task, WorkerPool
from marlctl.trainer.distributed.worker import pad_episodes
from marlctl.trainer.replay import ReplayBuffer
from marlctl.trainer.rollout import RolloutResult


class Versioned:
    """The learner's current policy version and how to snapshot its weights (shared by both sources)."""

    def __init__(self, pool: WorkerPool, weights: Any) -> None:
        self.pool, self.weights, self.version = pool, weights, 0

    def publish(self) -> None:
        self.pool.publish(self.version, self.weights)


class AsyncEpisodeSource:
    """The ``RolloutWorker`` interface (``run_episodes`` / ``run_steps``) over asynchronous remote workers."""

    def __init__(self, policy: Versioned, spec: EnvSpec, max_t: int, max_policy_lag: int,
                 tasks_per_worker: int) -> None:
        self.policy, self.pool, self.spec, self.max_t = policy, policy.pool, spec, max_t
        self.max_policy_lag, self.tasks_per_worker = max_policy_lag, tasks_per_worker
        self.ready: deque[tuple[Task, dict[str, Any]]] = deque()
        self.epsilon = 1.0
        self.last_lag = 0

    # -- the RolloutWorker interface the value algorithm calls -------------------------------

    def run_episodes(self, n_episodes: int, seed: int, epsilon: float, rng: np.random.Generator,
                     sink: ReplayBuffer | None = None) -> RolloutResult:
        del n_episodes, seed, rng  # the workers' own envs and seeds decide (worker_config)
        return self._next(epsilon, sink)

    def run_steps(self, n_steps: int, epsilon: float, rng: np.random.Generator, sink: ReplayBuffer | None,
                  reset_seed: int | None = None) -> RolloutResult:
        del n_steps, rng, reset_seed
        return self._next(epsilon, sink)

    # -- async collection ---------------------------------------------------------------------

    def feed(self) -> None:
        """Top every live worker up to ``tasks_per_worker`` collect tasks, with the newest weights."""
        self.policy.publish()
        for w in self.pool.alive():
            for _ in range(self.tasks_per_worker - self.pool.in_flight(w, "collect")):
                self.pool.submit_collect(w, self.epsilon)

    def on_result(self, task: Task, result: dict[str, Any] | None) -> None:
        if result is not None:
            self.ready.append((task, result))

    def discard_ready(self) -> int:
        """Drop the results fetched but not yet taken (the budget is reached); returns how many."""
        n = len(self.ready)
        self.ready.clear()
        return n

    def _next(self, epsilon: float, sink: ReplayBuffer | None) -> RolloutResult:
        if sink is None:
            raise RuntimeError("evaluation runs through DistributedAlgorithm.evaluate, not the episode source")
        self.epsilon = epsilon
        while True:
            self.feed()
            if not self.ready:
                for task, result in self.pool.wait():
                    self.on_result(task, result)
                continue
            task, result = self.ready.popleft()
            lag = self.policy.version - task.version
            if lag > self.max_policy_lag:
                self.pool.counters.drop("policy_lag", len(result["returns"]))
                continue
            self.last_lag = lag
            self.feed()  # the finished worker goes on at once, while the learner updates
            return self._accept(result, sink)

    def _accept(self, result: dict[str, Any], sink: ReplayBuffer) -> RolloutResult:
        episodes = result["episodes"]
        if episodes:
            full = pad_episodes(self.spec, self.max_t, episodes)
            sink.insert(full, np.arange(len(full["filled"])))
        key = str(result["worker"])
        c = self.pool.counters
        c.env_steps[key] = c.env_steps.get(key, 0) + int(result["env_steps"])
        return RolloutResult(int(result["env_steps"]), np.asarray(result["returns"], np.float64),
                             np.asarray(result["won"], bool), np.asarray(result["score"], np.float64),
                             np.asarray(result["lengths"], np.int64))


def combine_rollouts(parts: list[dict[str, np.ndarray]], device: torch.device) -> dict[str, torch.Tensor]:
    """Join workers' ``[T_w, B_w, ...]`` rollouts along the env axis; shorter ones (an ``episodes`` rollout
    stops when all its envs ended) are padded with copies of their last step marked invalid and ended, which
    GAE never reads back across (every env of such a rollout ended by its last step) and the losses mask out."""
    t_max = max(p["obs"].shape[0] for p in parts)
    padded = []
    for p in parts:
        t = p["obs"].shape[0]
        if t < t_max:
            q = {}
            for k, v in p.items():
                if k == "h0":
                    q[k] = v
                    continue
                tail = np.repeat(v[-1:], t_max - t, axis=0)
                if k == "valid":
                    tail[:] = False
                elif k in ("ended", "terminated", "starts"):
                    tail[:] = True
                elif k == "rewards":
                    tail[:] = 0
                q[k] = np.concatenate([v, tail])
            p = q
        padded.append(p)
    return {k: torch.as_tensor(np.concatenate([p[k] for p in padded], axis=0 if k == "h0" else 1), device=device)
            for k in padded[0]}


class SyncRolloutSource:
    """``_collect()`` of a PPO-family algorithm over synchronous remote workers (one version per batch)."""

    def __init__(self, policy: Versioned, device: torch.device) -> None:
        self.policy, self.pool, self.device = policy, policy.pool, device

    def __call__(self) -> tuple[Any, dict[str, float], int, int]:
        from marlctl.trainer.ppo.core import Rollout

        pool, version = self.pool, self.policy.version
        self.policy.publish()
        results: dict[int, dict[str, Any]] = {}
        while len(results) < pool.n:
            for w in pool.alive():
                if w not in results and not pool.busy(w, "collect"):
                    pool.submit_collect(w, 0.0)
            for task, result in pool.wait():
                if result is None or task.call != "collect":
                    continue
                if result["version"] != version:
                    pool.counters.drop("stale_version", int(result["n_episodes"]))
                    continue
                results[task.worker] = result
        ordered = [results[w] for w in range(pool.n)]
        ro = Rollout(**combine_rollouts([r["rollout"] for r in ordered], self.device))
        steps = sum(int(r["env_steps"]) for r in ordered)
        episodes = sum(int(r["n_episodes"]) for r in ordered)
        for r in ordered:
            key = str(r["worker"])
            pool.counters.env_steps[key] = pool.counters.env_steps.get(key, 0) + int(r["env_steps"])
        return ro, merge_episode_metrics([(r["metrics"], int(r["n_episodes"])) for r in ordered]), steps, episodes


def merge_episode_metrics(parts: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Workers' metric dicts as one: means weighted by episodes, ``*_min`` the minimum, ``*episodes`` and
    ``time/*`` (each worker's own seconds; they ran side by side) the sum and the maximum."""
    keys = sorted({k for m, _ in parts for k in m})
    out: dict[str, float] = {}
    for k in keys:
        vals = [(m[k], n) for m, n in parts if k in m]
        if k.endswith("_min"):
            out[k] = min(v for v, _ in vals)
        elif k.endswith("episodes"):
            out[k] = sum(v for v, _ in vals)
        elif k.startswith("time/"):
            out[k] = max(v for v, _ in vals)
        else:
            total = sum(n for _, n in vals)
            out[k] = (sum(v * n for v, n in vals) / total) if total else float(np.mean([v for v, _ in vals]))
    return out
