"""Batched rollouts: one batched env, ONE agent-network call per step over all ``B*N`` agent rows.

Epsilon-greedy over the avail masks is vectorized NumPy; each env's recurrent state and previous
action are reset exactly where its episode ended (the batched env auto-resets, so the next views
already belong to a fresh episode); each finished episode is cut from the ``[B, T+1, ...]`` staging
arrays into the replay buffer at the step it ends. The same worker runs greedy evaluations.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from marlctl.agents.recurrent import AgentNet
from marlctl.envs.base import BatchedEnv, BatchStep
from marlctl.trainer.replay import EpisodeArrays, ReplayBuffer
from marlctl.trainer.step_tensors import step_tensor


def derive_seed(*parts: int) -> int:
    """A 31-bit seed derived deterministically from integers (run seed, iteration, purpose...)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def epsilon_greedy(
    q_BNA: np.ndarray, avail_BNA: np.ndarray, epsilon: float, rng: np.random.Generator
) -> np.ndarray:
    """Per agent: a uniformly random available action with probability ``epsilon``, else the greedy
    available one. Never an unavailable action. Returns ``[B, N]`` int64."""
    greedy_BN = np.where(avail_BNA, q_BNA, -np.inf).argmax(axis=-1)
    if epsilon <= 0.0:
        return greedy_BN.astype(np.int64)
    noise_BNA = np.where(avail_BNA, rng.random(avail_BNA.shape), -1.0)  # argmax = uniform over available
    random_BN = noise_BNA.argmax(axis=-1)
    explore_BN = rng.random(greedy_BN.shape) < epsilon
    return np.where(explore_BN, random_BN, greedy_BN).astype(np.int64)


@dataclass
class RolloutResult:
    """What one rollout call produced."""

    env_steps: int
    """Joint steps taken by envs whose transitions were kept."""
    returns: np.ndarray  # [E] float: undiscounted return of each finished episode
    won: np.ndarray  # [E] bool
    score: np.ndarray  # [E] float: the env's own outcome measure
    lengths: np.ndarray  # [E] int

    @property
    def episodes(self) -> int:
        return len(self.returns)


class RolloutWorker:
    """Drives one ``BatchedEnv`` with the shared ``AgentNet``; holds the per-env recurrent state."""

    def __init__(self, env: BatchedEnv, net: AgentNet, device: torch.device, max_t: int | None = None) -> None:
        self.env, self.net, self.device = env, net, device
        spec = env.spec
        self.B, self.N = env.num_envs, spec.n_agents
        self.max_t = max_t or spec.episode_limit
        self.stage = EpisodeArrays(spec, self.B, self.max_t)  # [B, T+1, ...] the episodes in flight
        self.t_B = np.zeros(self.B, dtype=np.int64)
        self.return_B = np.zeros(self.B, dtype=np.float64)
        self.agent_ids = torch.arange(self.N, device=device).repeat(self.B)  # [B*N]: 0..N-1, 0..N-1, ...
        self.hidden = net.initial_hidden(self.B * self.N, device)  # [B*N, H]
        self.prev_action = torch.full((self.B * self.N,), -1, dtype=torch.int64, device=device)  # [B*N]
        self.current: BatchStep | None = None

    def reset(self, seed: int) -> None:
        """Reset every env (seeded) and every agent's recurrent state."""
        self.current = self.env.reset(seed=seed)
        self.stage.clear_rows(np.arange(self.B))
        self.t_B[:] = 0
        self.return_B[:] = 0.0
        self.hidden = self.net.initial_hidden(self.B * self.N, self.device)
        self.prev_action.fill_(-1)

    @torch.no_grad()
    def _act(self, step: BatchStep, epsilon: float, rng: np.random.Generator) -> np.ndarray:
        obs_RO = step_tensor(step, "obs", self.device).reshape(self.B * self.N, -1)  # R = B*N rows
        q_RA, self.hidden = self.net(obs_RO, self.prev_action, self.agent_ids, self.hidden)
        q_BNA = q_RA.reshape(self.B, self.N, -1).cpu().numpy()
        actions_BN = epsilon_greedy(q_BNA, step.avail, epsilon, rng)
        self.prev_action = torch.from_numpy(actions_BN.reshape(-1)).to(self.device)
        return actions_BN

    def _reset_where_done(self, done_B: np.ndarray) -> None:
        """Zero the hidden state and clear the previous action of every agent of every env that just ended."""
        if not done_B.any():
            return
        done_R = torch.from_numpy(np.repeat(done_B, self.N)).to(self.device)  # [B*N]
        self.hidden = self.hidden.masked_fill(done_R[:, None], 0.0)
        self.prev_action = self.prev_action.masked_fill(done_R, -1)

    def _step(self, epsilon: float, rng: np.random.Generator, active_B: np.ndarray,
              sink: ReplayBuffer | None, out: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, int]:
        assert self.current is not None, "reset() first"
        cur, data = self.current, self.stage.data
        actions_BN = self._act(cur, epsilon, rng)
        nxt = self.env.step(actions_BN)
        rows = np.flatnonzero(active_B)
        t = self.t_B[rows]
        if rows.size and int(t.max()) >= self.max_t:
            raise RuntimeError(f"{self.env.spec.env_id}: an episode ran past episode_limit={self.max_t} "
                               "without being truncated")
        data["obs"][rows, t] = cur.obs[rows]
        data["state"][rows, t] = cur.state[rows]
        data["avail"][rows, t] = cur.avail[rows]
        data["actions"][rows, t] = actions_BN[rows]
        data["reward"][rows, t] = nxt.reward[rows]
        data["terminated"][rows, t] = nxt.terminated[rows]
        data["filled"][rows, t] = True
        self.t_B[rows] += 1
        self.return_B[rows] += nxt.reward[rows]
        finished = np.flatnonzero(nxt.done & active_B)
        if finished.size:
            tf = self.t_B[finished]
            data["obs"][finished, tf] = nxt.final_obs[finished]
            data["state"][finished, tf] = nxt.final_state[finished]
            data["avail"][finished, tf] = nxt.final_avail[finished]
            if sink is not None:
                sink.insert(data, finished)
            out.append((self.return_B[finished].copy(), nxt.won[finished].copy(),
                        nxt.score[finished].copy(), tf.copy()))
            self.stage.clear_rows(finished)
            self.t_B[finished] = 0
            self.return_B[finished] = 0.0
        self._reset_where_done(nxt.done)
        self.current = nxt
        return finished, rows.size

    @staticmethod
    def _result(env_steps: int, out: list[tuple[np.ndarray, ...]]) -> RolloutResult:
        if not out:
            return RolloutResult(env_steps, np.zeros(0), np.zeros(0, bool), np.zeros(0), np.zeros(0, np.int64))
        r, w, s, n = (np.concatenate(x) for x in zip(*out, strict=True))
        return RolloutResult(env_steps, r.astype(np.float64), w.astype(bool), s.astype(np.float64), n)

    def run_episodes(self, n_episodes: int, seed: int, epsilon: float, rng: np.random.Generator,
                     sink: ReplayBuffer | None = None) -> RolloutResult:
        """Reset with ``seed`` and play exactly ``n_episodes`` episodes (B at a time), then stop.

        An env keeps playing (auto-reset) while episodes remain to be started; the others idle and
        their steps are neither stored nor counted."""
        self.reset(seed)
        active_B = np.arange(self.B) < n_episodes
        to_start = n_episodes - int(active_B.sum())
        out: list[tuple[np.ndarray, ...]] = []
        env_steps = 0
        while active_B.any():
            finished, stepped = self._step(epsilon, rng, active_B, sink, out)
            env_steps += stepped
            for b in finished:
                if to_start > 0:
                    to_start -= 1
                else:
                    active_B[b] = False
        return self._result(env_steps, out)

    def run_steps(self, n_steps: int, epsilon: float, rng: np.random.Generator, sink: ReplayBuffer | None,
                  reset_seed: int | None = None) -> RolloutResult:
        """Continue the in-flight episodes for ``n_steps`` batched steps (reset first when asked or never reset)."""
        if reset_seed is not None or self.current is None:
            self.reset(reset_seed if reset_seed is not None else 0)
        active_B = np.ones(self.B, dtype=bool)
        out: list[tuple[np.ndarray, ...]] = []
        env_steps = 0
        for _ in range(n_steps):
            env_steps += self._step(epsilon, rng, active_B, sink, out)[1]
        return self._result(env_steps, out)
