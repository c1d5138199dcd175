"""``DistributedAlgorithm``: the run's own ``Algorithm`` as the learner, with collection and evaluation on Ray workers.

The learner is the unchanged algorithm object (replay buffer, optimizer, updates on the learner's device);
only where its experience comes from changes: a value method's ``RolloutWorker`` is replaced by an
``AsyncEpisodeSource``, a policy method's ``_collect`` by a ``SyncRolloutSource`` (``collect.py``).
Each learner iteration that updated the networks is one new policy version. Checkpoints are the learner's
own state plus the pool's counters (restarts, dropped episodes, tasks handed out), so ``--resume`` works
with any worker count: nothing in the state depends on how many workers collected it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from marlctl.envs.base import EnvSpec
from marlctl.trainer.algorithm import IterationStats
from marlctl.trainer.config import TrainConfig
from marlctl.trainer.distributed.cluster import connect
from marlctl.trainer.distributed.collect import (
    AsyncEpisodeSource,
    SyncRolloutSource,
    Versioned,
    merge_episode_metrics,
)
from marlctl.trainer.distributed.pool import PoolCounters, WorkerPool
from marlctl.trainer.distributed.worker import policy_weights
from marlctl.trainer.registry import algorithm_spec

STATE_KEY = "distributed"


def learner_config(cfg: TrainConfig, kind: str) -> TrainConfig:
    """A policy method's learner sees one on-policy batch of every worker's envs (its minibatches split it)."""
    if kind != "policy":
        return cfg
    per_worker = cfg.ray.envs_per_worker or cfg.env.num_envs
    env = type(cfg.env)(**{**vars(cfg.env), "num_envs": per_worker * cfg.ray.rollout_workers})
    return cfg.replace(env=env)


class DistributedAlgorithm:
    """An ``Algorithm`` whose rollouts and evaluations run on ``cfg.ray.rollout_workers`` Ray actors."""

    def __init__(self, cfg: TrainConfig, spec: EnvSpec, device: torch.device,
                 log: Callable[..., None] | None = None) -> None:
        self.cfg, self.spec = cfg, spec
        self.log = log or (lambda event, **fields: None)
        algo_spec = algorithm_spec(cfg.run.algo)
        self.kind = algo_spec.kind
        self._disconnect = connect(cfg.ray.address, cfg.ray.connect_timeout_s)
        self.pool: WorkerPool | None = None
        try:
            self.inner = algo_spec.build(learner_config(cfg, self.kind), spec, device)
            self.name = self.inner.name
            self.pool = WorkerPool(cfg, self.kind, self._log)
        except BaseException:
            self.close()
            raise
        self._rate_mark: tuple[float, dict[str, int], str] = (time.perf_counter(), {}, "")
        self.policy = Versioned(self.pool, lambda: policy_weights(self.inner, self.kind))
        if self.kind == "value":
            self.source: AsyncEpisodeSource | None = AsyncEpisodeSource(
                self.policy, spec, spec.episode_limit, cfg.ray.max_policy_lag, cfg.ray.tasks_per_worker)
            self.inner.worker = self.source  # the seam: the replay buffer is filled from the workers
        else:
            self.source = None
            self.inner._collect = SyncRolloutSource(self.policy, device)  # the seam: on-policy batches

    def _log(self, event: str, **fields: Any) -> None:
        self.log(event, **fields)

    # ------------------------------------------------------------ Algorithm

    def train_iteration(self) -> IterationStats:
        stats = self.inner.train_iteration()
        if stats.updates > 0:
            self.policy.version += 1
        stats.metrics["train/policy_lag"] = float(self.policy_lag())  # averaged over each log line
        return stats

    def settle(self) -> None:
        """The budget is reached: account for the tasks still in flight before the final evaluation."""
        assert self.pool is not None
        discarded = self.pool.settle() + (self.source.discard_ready() if self.source is not None else 0)
        if discarded:
            self._log("tasks_discarded", tasks=discarded, reason="past_budget")

    def fault_metrics(self) -> dict[str, float]:
        """Running totals for the log line and the metrics exporter."""
        assert self.pool is not None
        c = self.pool.counters
        out = {"train/worker_restarts": float(c.worker_restarts),
               "train/workers_alive": float(len(self.pool.alive())),
               "train/episodes_dropped": float(sum(c.episodes_dropped.values()))}
        out.update({f"train/episodes_dropped/{k}": float(v) for k, v in c.episodes_dropped.items()})
        return out

    def evaluate(self, n_episodes: int) -> dict[str, float]:
        assert self.pool is not None
        self.policy.publish()
        on_result = self.source.on_result if self.source else (lambda task, result: None)
        parts = self.pool.evaluate(n_episodes, on_result)
        return merge_episode_metrics([(p, int(p.get("eval/episodes", 1))) for p in parts])

    def state_dict(self) -> dict[str, Any]:
        assert self.pool is not None
        return {**self.inner.state_dict(),
                STATE_KEY: {"counters": self.pool.counters.to_dict(), "version": self.policy.version}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        mine = state.pop(STATE_KEY, None)
        self.inner.load_state_dict(state)
        if mine is not None and self.pool is not None:
            self.pool.counters = PoolCounters.from_dict(mine["counters"])
            self.policy.version = int(mine["version"])

    def agent_bundle(self) -> dict[str, Any]:
        return self.inner.agent_bundle()

    def replay_buffer(self) -> Any:
        """The learner's replay buffer (value methods; checkpointed beside the state by the run loop)."""
        get = getattr(self.inner, "replay_buffer", None)
        return get() if callable(get) else None

    # ------------------------------------------------------------ what the loop shows

    def policy_lag(self) -> int:
        """Versions between the learner and the episodes it took last (0 for on-policy methods)."""
        return self.source.last_lag if self.source else 0

    def progress_info(self) -> str:
        """Workers alive and each worker's accepted env-steps/s over the last few seconds (the progress line)."""
        assert self.pool is not None
        now, steps = time.perf_counter(), self.worker_env_steps()
        t0, before, shown = self._rate_mark
        if now - t0 >= 2.0 or not shown:
            rates = [f"w{w} {(n - before.get(w, 0)) / max(now - t0, 1e-9):,.0f}/s" for w, n in sorted(steps.items())]
            shown = " ".join(rates)
            self._rate_mark = (now, steps, shown)
        return f"workers {len(self.pool.alive())}/{self.pool.n}  {shown}"

    def worker_env_steps(self) -> dict[str, int]:
        assert self.pool is not None
        return dict(self.pool.counters.env_steps)

    def close(self) -> None:
        try:
            if self.pool is not None:
                self.pool.close()
            inner = getattr(self, "inner", None)
            close = getattr(inner, "close", None)
            if callable(close):
                close()
        finally:
            self._disconnect()
