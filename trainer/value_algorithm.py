"""The ``Algorithm`` of every value method: batched epsilon-greedy rollouts -> episode replay -> a learner.

One iteration = a rollout (``env.rollout = episodes``: reset the B envs with a seed derived from
(run seed, iteration) and play one episode each; ``steps``: ``steps_per_iteration`` more batched
steps of the running envs), then ``learner.updates_per_iteration`` gradient steps on episodes
sampled from the buffer, then a hard target update every ``target_update_episodes`` episodes.
Epsilon is annealed linearly in env steps and held constant within an iteration.

Resume: the state holds the learner (nets, targets, optimizer), counters and the NumPy RNG; the
buffer (``run.checkpoint_buffer``) is not in it but offered by ``replay_buffer()``, which the run loop
snapshots once beside the latest checkpoint. In ``episodes`` mode an iteration starts from freshly seeded envs, so a
resumed run is identical to an uninterrupted one; in ``steps`` mode the in-flight episodes at the
checkpoint are not stored, so a resumed run restarts its envs (documented difference).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from marlctl.agents.bundle import make_agent_bundle_entry
from marlctl.envs.base import EnvSpec
from marlctl.trainer.algorithm import IterationStats
from marlctl.trainer.config import TrainConfig
from marlctl.trainer.learners.base import ValueLearner
from marlctl.trainer.replay import ReplayBuffer
from marlctl.trainer.rollout import RolloutResult, RolloutWorker, derive_seed

# Sub-streams of derive_seed(run seed, STREAM, ...).
_RNG_STREAM, _TRAIN_ENV_STREAM, _EVAL_ENV_STREAM, _RESTART_ENV_STREAM = 1, 2, 3, 4


def episode_metrics(prefix: str, res: RolloutResult, has_won: bool = True) -> dict[str, float]:
    """Mean return, win rate, score and length of the finished episodes (empty when none finished)."""
    if res.episodes == 0:
        return {}
    out = {
        f"{prefix}/return": float(res.returns.mean()),
        f"{prefix}/score": float(res.score.mean()),
        f"{prefix}/episode_length": float(res.lengths.mean()),
    }
    if has_won:
        out[f"{prefix}/win_rate"] = float(res.won.mean())
    return out


class ValueAlgorithm:
    """Rollout + replay + ``ValueLearner`` for one value-factorization method (``registry.value_method``).

    ``make_buffer(cfg, spec)`` builds the episode replay (default: the uniform ``ReplayBuffer``)."""

    def __init__(self, name: str, cfg: TrainConfig, spec: EnvSpec, device: torch.device,
                 learner_cls: type[ValueLearner],
                 make_buffer: Callable[[TrainConfig, EnvSpec], ReplayBuffer] | None = None) -> None:
        from marlctl.envs import make_batched_env

        self.name, self.cfg, self.spec, self.device = name, cfg, spec, device
        self.learner = learner_cls(cfg, spec, device)
        self.env = make_batched_env(cfg.env.env_id, cfg.env.num_envs)
        self.worker = RolloutWorker(self.env, self.learner.agent, device, spec.episode_limit)
        self.buffer = (make_buffer(cfg, spec) if make_buffer is not None
                       else ReplayBuffer(spec, cfg.replay.capacity, spec.episode_limit))
        self.rng = np.random.default_rng(derive_seed(cfg.run.seed, _RNG_STREAM))
        self.env_steps = 0
        self.episodes = 0
        self.iterations = 0
        self.evals = 0
        self.env_restarts = 0
        self.last_target_update_episode = 0
        self.needs_restart = True  # steps mode: (re)start the envs before the next rollout

    # ------------------------------------------------------------ Algorithm

    def epsilon(self) -> float:
        x = self.cfg.exploration
        frac = min(1.0, self.env_steps / max(1, x.epsilon_anneal_steps))
        return x.epsilon_start + frac * (x.epsilon_finish - x.epsilon_start)

    def train_iteration(self) -> IterationStats:
        env_cfg, eps = self.cfg.env, self.epsilon()
        self.learner.nets.eval()
        if env_cfg.rollout == "episodes":
            seed = derive_seed(self.cfg.run.seed, _TRAIN_ENV_STREAM, self.iterations)
            res = self.worker.run_episodes(env_cfg.num_envs, seed, eps, self.rng, sink=self.buffer)
        else:
            restart = None
            if self.needs_restart:
                restart = derive_seed(self.cfg.run.seed, _RESTART_ENV_STREAM, self.env_restarts)
                self.env_restarts += 1
                self.needs_restart = False
            n = env_cfg.steps_per_iteration or self.spec.episode_limit
            res = self.worker.run_steps(n, eps, self.rng, self.buffer, reset_seed=restart)
        self.iterations += 1
        self.env_steps += res.env_steps
        self.episodes += res.episodes

        losses: dict[str, list[float]] = {}
        updates = 0
        start = self.cfg.replay.learning_starts or self.cfg.replay.batch_size
        if len(self.buffer) >= start:
            for _ in range(self.cfg.learner.updates_per_iteration):
                batch = self.buffer.sample(self.cfg.replay.batch_size, self.rng, self.device)
                for k, v in self.learner.update(batch).items():
                    losses.setdefault(k, []).append(v)
                updates += 1
        if self.episodes - self.last_target_update_episode >= self.cfg.learner.target_update_episodes:
            self.learner.update_targets()
            self.last_target_update_episode = self.episodes

        metrics = episode_metrics("train", res, self.spec.has_won)
        metrics["train/epsilon"] = eps
        metrics["train/buffer_episodes"] = float(len(self.buffer))
        metrics.update({k: float(np.mean(v)) for k, v in losses.items()})
        return IterationStats(env_steps=res.env_steps, episodes=res.episodes, updates=updates, metrics=metrics)

    def evaluate(self, n_episodes: int) -> dict[str, float]:
        """Greedy decentralized evaluation on seeds of their own (training RNG untouched)."""
        self.learner.nets.eval()
        seed = derive_seed(self.cfg.run.seed, _EVAL_ENV_STREAM, self.evals)
        self.evals += 1
        res = self.worker.run_episodes(n_episodes, seed, 0.0, np.random.default_rng(seed), sink=None)
        self.needs_restart = True  # the eval used the training envs
        out = episode_metrics("eval", res, True)
        out["eval/episodes"] = float(res.episodes)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "learner": self.learner.state_dict(),
            "counters": {
                "env_steps": self.env_steps, "episodes": self.episodes, "iterations": self.iterations,
                "evals": self.evals, "env_restarts": self.env_restarts,
                "last_target_update_episode": self.last_target_update_episode,
            },
            "rng": self.rng.bit_generator.state,
        }

    def replay_buffer(self) -> ReplayBuffer | None:
        """The buffer to snapshot with the latest checkpoint (None when ``run.checkpoint_buffer`` is off)."""
        return self.buffer if self.cfg.run.checkpoint_buffer else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        if state.get("buffer") is not None:  # checkpoints written before the replay snapshot carried the buffer
            self.buffer.load_state_dict(state["buffer"])
        c = state["counters"]
        self.env_steps, self.episodes, self.iterations = c["env_steps"], c["episodes"], c["iterations"]
        self.evals, self.env_restarts = c["evals"], c["env_restarts"]
        self.last_target_update_episode = c["last_target_update_episode"]
        self.rng.bit_generator.state = state["rng"]
        self.needs_restart = True

    def agent_bundle(self) -> dict[str, Any]:
        return make_agent_bundle_entry(self.learner.agent, "q")

    def close(self) -> None:
        self.env.close()

