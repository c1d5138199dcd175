"""Hallway: TAD (Ye et al.) Appendix E, a multi-step coordination game for two agents.

Cells ``0 .. length-1``; goal ``g1`` is cell 0 (terminal reward +8), goal ``g2`` is the last
cell (terminal reward +5), and both agents start at ``s0 = length - 2``. Each step every
agent moves left (0) or right (1) and the team pays a movement cost of 1. The episode
terminates as soon as any agent stands on a goal; the terminal reward is paid (and the
episode won) only if all agents reach the same goal at the same step. With the paper's
length 5, the optimum is three steps left together, return 8 - 3 = 5; the local optimum is
one step right together, return 5 - 1 = 4 (the paper's "optimal return of 5" vs "4").
Episode limit 100. Fully observable: every agent's observation and the state are the
one-hot cells of all agents, in agent order. ``score`` = the terminal reward earned (8, 5 or 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from marlctl.envs import drawing
from marlctl.envs.base import EnvFamily, EnvSpec
from marlctl.envs.errors import EnvOptionError
from marlctl.envs.vector import VectorGame, options_game_factories

FAMILY = EnvFamily(
    name="hallway",
    summary="TAD App. E: agents must reach the same end of a hallway together (optimal return 5)",
    options=(
        ("agents", "number of agents (2)"),
        ("length", "hallway cells, goals at both ends, start next to the +5 goal (5)"),
        ("limit", "episode limit in steps (100)"),
    ),
)

G1_REWARD = 8.0  # far goal, cell 0
G2_REWARD = 5.0  # near goal, last cell
MOVE_COST = 1.0  # paid by the team every step


@dataclass(frozen=True)
class HallwayConfig:
    """Options of a ``hallway`` id."""

    agents: int = 2
    """Number of agents walking the hallway (the paper uses 2)."""
    length: int = 5
    """Number of cells including both goals (the paper uses 5); the start is ``length - 2``."""
    limit: int = 100
    """Episode limit in steps (the paper's 100 stops endless back-and-forth)."""

    def __post_init__(self) -> None:
        if self.agents < 2:
            raise EnvOptionError(f"hallway: agents must be >= 2, got {self.agents}")
        if self.length < 4:
            raise EnvOptionError(f"hallway: length must be >= 4 (goal, 2 cells, goal), got {self.length}")
        if self.limit < 1:
            raise EnvOptionError(f"hallway: limit must be >= 1, got {self.limit}")


class HallwayGame(VectorGame):
    """B hallways stepped together."""

    def __init__(self, env_id: str, cfg: HallwayConfig, num_envs: int) -> None:
        super().__init__(num_envs)
        self.cfg = cfg
        n, length = cfg.agents, cfg.length
        self.spec = EnvSpec(
            env_id=env_id,
            n_agents=n,
            obs_dim=n * length,
            state_dim=n * length,
            n_actions=2,
            episode_limit=cfg.limit,
            fully_observable=True,
            has_won=True,
            action_names=("left", "right"),
        )
        self.pos_BN = np.full((num_envs, n), length - 2, dtype=np.int64)

    def reset_where(self, where_B: np.ndarray) -> None:
        self.pos_BN[where_B] = self.cfg.length - 2

    def transition(self, actions_BN: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        last = self.cfg.length - 1
        self.pos_BN = self.pos_BN + 2 * actions_BN - 1
        at_g1_BN, at_g2_BN = self.pos_BN == 0, self.pos_BN == last
        terminated_B = (at_g1_BN | at_g2_BN).any(axis=1)
        bonus_B = np.where(at_g1_BN.all(axis=1), G1_REWARD, 0.0) + np.where(at_g2_BN.all(axis=1), G2_REWARD, 0.0)
        reward_B = bonus_B - MOVE_COST
        return reward_B.astype(np.float32), terminated_B, bonus_B > 0, bonus_B

    def observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        B, N, L = self.num_envs, self.cfg.agents, self.cfg.length
        state_BS = np.eye(L, dtype=np.float32)[self.pos_BN].reshape(B, N * L)  # [B, N*L]
        obs_BNO = np.repeat(state_BS[:, None, :], N, axis=1)
        avail_BNA = np.ones((B, N, 2), dtype=bool)
        return obs_BNO, state_BS, avail_BNA

    def render(self, b: int) -> np.ndarray:
        """One row per agent; goal columns coloured (bright = +8, dim = +5), agents as dots."""
        N, L, cell = self.cfg.agents, self.cfg.length, 32
        img = drawing.canvas(N, L, cell)
        for r in range(N):
            drawing.fill_cell(img, r, 0, cell, drawing.GREEN)
            drawing.fill_cell(img, r, L - 1, cell, (40, 110, 60))
            c = int(self.pos_BN[b, r])
            drawing.dot(img, r, c, cell, drawing.PALETTE[r % len(drawing.PALETTE)])
        return img


make, make_batched = options_game_factories('hallway', HallwayConfig, HallwayGame, 'hallway:length=5,limit=100')
