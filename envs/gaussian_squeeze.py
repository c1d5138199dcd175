"""Multi-domain Gaussian Squeeze: QTRAN (Son et al., 2019) Appendix C.1, Figure 6.

Ten agents, actions ``u_i in {0..9}``; each episode the environment draws every agent's
unit resource ``s_i ~ U[0, 0.2]``. One step: the joint action uses ``x = sum_i s_i u_i``
and the team reward is ``G(x) = sum_k x * exp(-(x - mu_k)^2 / sigma_k^2)``:
``domains=1``: (mu, sigma) = (8, 1); ``domains=2``: (8, 0.5) and (5, 1) - the wide, easy
peak near x = 5 is lower than the narrow one near x = 8. Fully observable: every agent's
observation and the state are the vector ``s`` (agent order). ``score`` = G(x).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from marlctl.envs import drawing
from marlctl.envs.base import EnvFamily, EnvSpec
from marlctl.envs.errors import EnvOptionError
from marlctl.envs.vector import VectorGame, options_game_factories

# QTRAN App. C.1: (mu_k, sigma_k) per domain setting.
DOMAINS: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((8.0, 1.0),),
    2: ((8.0, 0.5), (5.0, 1.0)),
}
S_MAX = 0.2  # resource per agent is drawn from U[0, S_MAX]
N_ACTIONS = 10

FAMILY = EnvFamily(
    name="gaussian_squeeze",
    summary="QTRAN App. C.1: one-step resource allocation, reward x*exp(-(x-mu)^2/sigma^2) per domain",
    options=(
        ("domains", "1 = (mu 8, sigma 1); 2 = (8, 0.5) + (5, 1) (1)"),
        ("agents", "number of agents (10)"),
    ),
)


@dataclass(frozen=True)
class GaussianSqueezeConfig:
    """Options of a ``gaussian_squeeze`` id."""

    domains: int = 1
    """Number of Gaussian domains K: 1 or 2, with the paper's (mu, sigma)."""
    agents: int = 10
    """Number of agents N (the paper uses 10)."""

    def __post_init__(self) -> None:
        if self.domains not in DOMAINS:
            raise EnvOptionError(f"gaussian_squeeze: domains must be one of {sorted(DOMAINS)}, got {self.domains}")
        if self.agents < 2:
            raise EnvOptionError(f"gaussian_squeeze: agents must be >= 2, got {self.agents}")


def squeeze_reward(x: np.ndarray, domains: int) -> np.ndarray:
    """G(x) = sum_k x exp(-(x - mu_k)^2 / sigma_k^2), elementwise."""
    x = np.asarray(x, dtype=np.float64)
    return sum(x * np.exp(-((x - mu) ** 2) / sigma**2) for mu, sigma in DOMAINS[domains])


class GaussianSqueezeGame(VectorGame):
    """B one-step Gaussian Squeeze games."""

    def __init__(self, env_id: str, cfg: GaussianSqueezeConfig, num_envs: int) -> None:
        super().__init__(num_envs)
        self.cfg = cfg
        n = cfg.agents
        self.spec = EnvSpec(
            env_id=env_id,
            n_agents=n,
            obs_dim=n,
            state_dim=n,
            n_actions=N_ACTIONS,
            episode_limit=1,
            fully_observable=True,
            has_won=False,
        )
        self.s_BN = np.zeros((num_envs, n))  # unit resources
        self.x_B = np.full(num_envs, np.nan)  # last resource usage, for render

    def reset_where(self, where_B: np.ndarray) -> None:
        draw_BN = self.rng.uniform(self.cfg.agents, where_B) * S_MAX
        self.s_BN[where_B] = draw_BN[where_B]
        self.x_B[where_B] = np.nan

    def transition(self, actions_BN: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        self.x_B = (self.s_BN * actions_BN).sum(axis=1)  # [B]
        g_B = squeeze_reward(self.x_B, self.cfg.domains)
        return g_B.astype(np.float32), np.ones(self.num_envs, bool), np.zeros(self.num_envs, bool), g_B

    def observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        B, N = self.num_envs, self.cfg.agents
        state_BS = self.s_BN.astype(np.float32)
        obs_BNO = np.repeat(state_BS[:, None, :], N, axis=1)
        return obs_BNO, state_BS, np.ones((B, N, N_ACTIONS), dtype=bool)

    def render(self, b: int) -> np.ndarray:
        """The reward curve G(x) over the reachable x, with the last x marked (yellow line)."""
        h, w = 120, 240
        img = np.empty((h, w, 3), np.uint8)
        img[:] = drawing.BACKGROUND
        x_max = S_MAX * (N_ACTIONS - 1) * self.cfg.agents
        xs = np.linspace(0.0, x_max, w)
        g = squeeze_reward(xs, self.cfg.domains)
        top = max(float(g.max()), 1e-9)
        rows = (h - 1 - np.round(g / top * (h - 10))).astype(int)
        img[rows, np.arange(w)] = drawing.GREEN
        x = self.x_B[b]
        if np.isfinite(x):
            img[:, int(round(min(x, x_max) / x_max * (w - 1)))] = drawing.YELLOW
        return img


make, make_batched = options_game_factories('gaussian_squeeze', GaussianSqueezeConfig, GaussianSqueezeGame, 'gaussian_squeeze:domains=2')
