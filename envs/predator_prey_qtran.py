"""QTRAN's own modified predator-prey (QTRAN §4 and Appendix C.1): catching is seeing, fixed 100 steps.

The rules of the QTRAN paper, on the board, moves and views of ``predator_prey`` (ReMIX's variant):

- five actions: up, down, left, right, stay (no ``catch`` action); moving off the board or into
  an occupied cell is unavailable;
- a predator "catches" a prey that lies in one of its four cardinal directions (same row or
  same column) within its ``view x view`` window, i.e. at most ``view // 2`` cells away. The paper's
  words ("the prey is within the cardinal direction of at least one predator") also read as
  adjacency; ``reach=1`` plays that reading (a prey one cell up, down, left or right);
- after the predators move, each prey caught by two or more predators at once pays the team
  ``reward`` (1) and regenerates at a uniformly random free cell; each prey caught by exactly one
  predator costs ``-punishment`` (the paper's P, run at 0.5, 1.0, 1.5); then every prey picks one
  of the five actions uniformly at random (a move onto a taken cell leaves it where it is);
- the game never terminates: it runs a fixed ``limit`` (100) steps and is truncated there.

Defaults are the paper's 5x5 setting (2 predators, one prey, 5x5 view); its 7x7 setting is
``predator_prey_qtran:agents=4,prey=2,grid=7``. ``score`` = joint catches so far; there is no win.
Observation (as ``predator_prey``): the three-channel view window (predators, prey, outside the
board) and the agent's own (row, col) scaled to [0, 1]; the paper lists own coordinates, agent id
(our agent network adds the one-hot id) and the prey's relative coordinates when in view, so the
window's predator channel is extra information. State: the full board, ``2 * grid * grid``.
Trainer defaults for this family (feed-forward agents with three hidden layers of 64, Adam,
epsilon 1 -> 0.1): ``trainer/configs/env/predator_prey_qtran.toml``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from marlctl.envs.base import EnvFamily
from marlctl.envs.errors import EnvOptionError
from marlctl.envs.predator_prey import ACTION_NAMES, STAY, PredatorPreyConfig, PredatorPreyGame
from marlctl.envs.vector import options_game_factories

QTRAN_ACTION_NAMES = ACTION_NAMES[: STAY + 1]  # up, down, left, right, stay

FAMILY = EnvFamily(
    name="predator_prey_qtran",
    summary="QTRAN's modified predator-prey: a prey in line of sight of two predators pays 1, of one -P; 100 steps",
    options=(
        ("agents", "predators (2; the paper's 7x7 setting: 4)"),
        ("prey", "prey (1; 7x7 setting: 2)"),
        ("grid", "board side (5; 7x7 setting: 7)"),
        ("view", "odd side of each predator's view window (5)"),
        ("reach", "cells along a row or column within which a predator catches: 1 = adjacent only; "
                  "0 = as far as it sees, view // 2 (0)"),
        ("punishment", "penalty P >= 0 per prey caught by one predator alone (1.0; the paper runs 0.5, 1.0, 1.5)"),
        ("reward", "team reward per prey caught by two or more at once (1)"),
        ("limit", "fixed episode length in steps (100)"),
    ),
)


@dataclass(frozen=True)
class QtranPredatorPreyConfig(PredatorPreyConfig):
    """Options of a ``predator_prey_qtran`` id (defaults: QTRAN §4, Appendix C.1, the 5x5 setting)."""

    family: ClassVar[str] = "predator_prey_qtran"
    agents: int = 2
    prey: int = 1
    grid: int = 5
    view: int = 5
    punishment: float = 1.0
    reward: float = 1.0
    limit: int = 100
    reach: int = 0
    """Catching distance along a row or column; 0 = ``view // 2`` (every prey in line that the predator sees)."""

    @property
    def catch_reach(self) -> int:
        """Cells along a row or column within which a predator catches: ``reach``, or ``view // 2`` when 0."""
        return self.reach or self.view // 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.reach <= self.view // 2:
            raise EnvOptionError(f"{self.family}: reach must be 0 (= view // 2) or 1..{self.view // 2} (a predator "
                                 f"catches only what its {self.view}x{self.view} view holds), got {self.reach}")
        if self.agents + self.prey >= self.grid * self.grid:
            raise EnvOptionError(f"{self.family}: agents + prey ({self.agents + self.prey}) must leave a free cell on "
                                 f"the {self.grid}x{self.grid} grid for a caught prey to regenerate")


class QtranPredatorPreyGame(PredatorPreyGame):
    """B boards of QTRAN's rules stepped together (every predator and prey stays on the board)."""

    def __init__(self, env_id: str, cfg: QtranPredatorPreyConfig, num_envs: int) -> None:
        super().__init__(env_id, cfg, num_envs)
        self.spec = dataclasses.replace(
            self.spec, n_actions=len(QTRAN_ACTION_NAMES), has_won=False, action_names=QTRAN_ACTION_NAMES
        )

    def catchers(self) -> np.ndarray:
        """``[B, N, P]`` bool: prey p lies in a cardinal direction of predator n, at most ``reach`` cells away."""
        d_BNP2 = self.apos_BN2[:, :, None, :] - self.ppos_BP2[:, None, :, :]
        in_line = (d_BNP2 == 0).any(axis=-1)
        return in_line & (np.abs(d_BNP2).sum(axis=-1) <= self.cfg.catch_reach)

    def _regenerate(self, caught_BP: np.ndarray, occ: np.ndarray) -> None:
        """Each caught prey jumps to a uniformly random cell free of every piece (``occ`` updated in place)."""
        B, G = self.num_envs, self.cfg.grid
        u_BP = self.rng.uniform(self.cfg.prey)  # drawn every step, so the streams do not depend on catches
        for p in range(self.cfg.prey):
            go_B = caught_BP[:, p]
            if not go_B.any():
                continue
            free_BC = (occ.reshape(B, G * G) == 0)
            pick_B = np.floor(u_BP[:, p] * free_BC.sum(axis=1)).astype(np.int64)  # k-th free cell
            cell_B = np.argmax(np.cumsum(free_BC, axis=1) > pick_B[:, None], axis=1)
            old = self.ppos_BP2[go_B, p]
            occ[self._b[go_B], old[:, 0], old[:, 1]] = 0
            self.ppos_BP2[go_B, p, 0] = cell_B[go_B] // G
            self.ppos_BP2[go_B, p, 1] = cell_B[go_B] % G
            occ[self._b[go_B], cell_B[go_B] // G, cell_B[go_B] % G] = 2

    def transition(self, actions_BN: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.cfg
        occ = self._occupancy()
        self._move_predators(actions_BN, occ)
        n_catchers_BP = self.catchers().sum(axis=1)
        caught_BP = n_catchers_BP >= 2
        lone_BP = n_catchers_BP == 1
        reward_B = cfg.reward * caught_BP.sum(axis=1) - cfg.punishment * lone_BP.sum(axis=1)
        self.captured_B += caught_BP.sum(axis=1)
        self._regenerate(caught_BP, occ)
        self._move_prey(occ, uniform_action=True)
        never_B = np.zeros(self.num_envs, dtype=bool)  # fixed length: only the limit ends an episode
        return reward_B.astype(np.float32), never_B, never_B.copy(), self.captured_B.astype(np.float64)

    def observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        occ = self._occupancy()
        obs_BNO, state_BS = self._views(occ)
        return obs_BNO, state_BS, self._move_avail(occ)


make, make_batched = options_game_factories(
    "predator_prey_qtran", QtranPredatorPreyConfig, QtranPredatorPreyGame, "predator_prey_qtran:punishment=1.5"
)
