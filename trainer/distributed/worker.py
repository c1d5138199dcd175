"""The rollout worker that runs inside a Ray actor: one batched env and a CPU copy of the agent networks.

A worker builds the run's own ``Algorithm`` on CPU (the same rollout code as the single-process path:
``RolloutWorker`` for value methods, ``RecurrentPPOBase._collect`` for MAPPO / TAD-PPO, with TAD's
sequential decisions batched over the worker's envs) with ``envs_per_worker`` envs and a seed derived
from (run seed, worker index). It never trains: it loads the learner's weights by version (one object in
the object store per version, fetched only when the version changes) and returns finished episodes as
NumPy arrays tagged with the policy version and the worker index. This module imports no Ray; ``pool.py``
makes ``RolloutWorkerActor`` a Ray actor.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any

import numpy as np
import torch
from marlctl.envs.base import EnvSpec
from marlctl.trainer.config import TrainConfig, from_sections
from marlctl.trainer.distributed.errors import VersionMismatchError
from marlctl.trainer.registry import algorithm_spec
from marlctl.trainer.replay import FIELDS, EpisodeArrays
from marlctl.trainer.rollout import derive_seed

# Sub-streams of derive_seed(run seed, STREAM, worker, ...): distinct from the single-process streams.
WORKER_STREAM, TASK_STREAM = 101, 102
# Inputs of the per-step decision that a worker needs, by algorithm kind (the learner keeps the rest).
_POLICY_MODULES = ("actor", "critic", "value_norm")


def marlctl_version() -> str:
    from marlctl.agents.onnx_io import marlctl_version as installed

    return installed()


def worker_config(cfg: TrainConfig, worker: int) -> TrainConfig:
    """The config a worker builds its algorithm from: its own env batch and seed, CPU, no progress output."""
    run = type(cfg.run)(**{**vars(cfg.run), "seed": derive_seed(cfg.run.seed, WORKER_STREAM, worker),
                           "device": "cpu", "progress": False})
    env = type(cfg.env)(**{**vars(cfg.env), "num_envs": cfg.ray.envs_per_worker or cfg.env.num_envs})
    return cfg.replace(run=run, env=env)


# ------------------------------------------------------------------ weights


def policy_weights(algo: Any, kind: str) -> dict[str, dict[str, np.ndarray]]:
    """What a worker needs to act like the learner, as NumPy arrays (one ``ray.put`` per version)."""
    if kind == "value":
        modules = {"agent": algo.learner.agent}
    else:
        modules = {name: getattr(algo, name) for name in _POLICY_MODULES}
    return {name: {k: v.detach().cpu().numpy().copy() for k, v in m.state_dict().items()}
            for name, m in modules.items()}


def load_policy_weights(algo: Any, kind: str, weights: dict[str, dict[str, np.ndarray]]) -> None:
    modules = {"agent": algo.learner.agent} if kind == "value" else {n: getattr(algo, n) for n in _POLICY_MODULES}
    for name, module in modules.items():
        module.load_state_dict({k: torch.tensor(v) for k, v in weights[name].items()})


# ------------------------------------------------------------------ episodes


class EpisodeCapture:
    """A replay sink for ``RolloutWorker``: keeps the finished episodes instead of storing them."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def insert(self, src: dict[str, np.ndarray], rows: np.ndarray) -> None:
        self.parts.append({name: src[name][rows].copy() for name in FIELDS})

    def arrays(self) -> dict[str, np.ndarray]:
        """``[E, t+1, ...]`` arrays cut to the longest captured episode (the learner pads them back)."""
        if not self.parts:
            return {}
        out = {name: np.concatenate([p[name] for p in self.parts]) for name in FIELDS}
        t = max(int(out["filled"].sum(axis=1).max()), 1)
        return {name: (a[:, : t + 1] if name in ("obs", "state", "avail") else a[:, :t]) for name, a in out.items()}


def pad_episodes(spec: EnvSpec, max_t: int, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Episodes cut by ``EpisodeCapture.arrays`` back at the replay buffer's ``[E, max_t+1, ...]`` shape."""
    e = len(arrays["filled"])
    full = EpisodeArrays(spec, e, max_t).data
    for name, arr in arrays.items():
        full[name][:, : arr.shape[1]] = arr
    return full


# ------------------------------------------------------------------ the actor body


class RolloutWorkerActor:
    """One rollout worker (wrapped by ``ray.remote`` in ``pool.py``; restarted by Ray when its process dies)."""

    def __init__(self, cfg_sections: dict[str, dict[str, Any]], worker: int, driver_version: str) -> None:
        # Built on first use, not here: an error in a method call reaches the learner as that error (an
        # actor's constructor error only as a dead actor), and Ray re-runs only this after a restart.
        self.sections, self.worker, self.driver_version = cfg_sections, worker, driver_version
        self.algo: Any = None

    def _ensure(self) -> None:
        if self.algo is not None:
            return
        mine = marlctl_version()
        if mine != self.driver_version:
            raise VersionMismatchError(f"rollout worker {self.worker} on {socket.gethostname()} runs marlctl {mine}, "
                                       f"the learner marlctl {self.driver_version}: install one version on every node")
        cfg = worker_config(from_sections(self.sections), self.worker)
        torch.set_num_threads(max(1, int(cfg.ray.worker_cpus)))
        from marlctl.envs import env_spec

        spec = algorithm_spec(cfg.run.algo)
        self.cfg, self.kind = cfg, spec.kind
        self.algo = spec.build(cfg, env_spec(cfg.env.env_id), torch.device("cpu"))
        self.version = -1
        self.needs_reset = True  # steps mode: (re)start the envs before the next value rollout

    def info(self) -> dict[str, Any]:
        """Builds the worker (env + networks) and says where it runs."""
        self._ensure()
        return {"worker": self.worker, "pid": os.getpid(), "host": socket.gethostname(),
                "marlctl": marlctl_version(), "num_envs": self.cfg.env.num_envs}

    def _sync(self, weights_box: list[Any], version: int) -> None:
        if version != self.version:
            import ray

            load_policy_weights(self.algo, self.kind, ray.get(weights_box[0]))
            self.version = version

    def collect(self, weights_box: list[Any], version: int, task: int, epsilon: float) -> dict[str, Any]:
        """One task: value methods play one episode per env (``episodes``) or ``steps_per_iteration`` batched
        steps (``steps``); policy methods one on-policy rollout. ``weights_box`` = ``[ObjectRef]`` (fetched
        only when ``version`` is new to this worker)."""
        self._ensure()
        self._sync(weights_box, version)
        t0 = time.perf_counter()
        out = self._collect(task, epsilon)
        out.update(worker=self.worker, version=version, task=task, pid=os.getpid(),
                   seconds=time.perf_counter() - t0)  # the worker's own collection time (benchmarks)
        return out

    def _collect(self, task: int, epsilon: float) -> dict[str, Any]:
        seed = derive_seed(self.cfg.run.seed, TASK_STREAM, task)
        out: dict[str, Any] = {}
        if self.kind == "value":
            algo, sink = self.algo, EpisodeCapture()
            algo.learner.nets.eval()
            rng = np.random.default_rng(seed)
            if self.cfg.env.rollout == "episodes":
                res = algo.worker.run_episodes(self.cfg.env.num_envs, seed, epsilon, rng, sink=sink)
            else:
                restart = seed if self.needs_reset else None
                self.needs_reset = False
                n = self.cfg.env.steps_per_iteration or algo.spec.episode_limit
                res = algo.worker.run_steps(n, epsilon, rng, sink, reset_seed=restart)
            out.update(env_steps=res.env_steps, episodes=sink.arrays(), returns=res.returns, won=res.won,
                       score=res.score, lengths=res.lengths)
            return out
        algo = self.algo
        algo.actor.train()
        algo.critic.train()
        if self.cfg.env.rollout == "episodes":
            algo.iteration = task  # _collect seeds its envs from (worker seed, iteration)
        ro, metrics, steps, episodes = algo._collect()
        out.update(env_steps=steps, n_episodes=episodes, metrics=metrics,
                   rollout={k: v.detach().cpu().numpy() for k, v in vars(ro).items()})
        return out

    def evaluate(self, weights_box: list[Any], version: int, n_episodes: int) -> dict[str, float]:
        """Greedy decentralized evaluation of ``n_episodes`` with the learner's weights of ``version``."""
        self._ensure()
        self._sync(weights_box, version)
        self.needs_reset = True  # value methods evaluate on the training envs
        return self.algo.evaluate(n_episodes)

    def close(self) -> None:
        close = getattr(self.algo, "close", None) if self.algo is not None else None
        if callable(close):
            close()
