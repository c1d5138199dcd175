"""Modified predator-prey: capture needs two predators at once, a lone attempt is punished.

Mechanics follow ReMIX (Appendix D.1, after Boehmer et al., 2020), the grid version of
QTRAN's "modified predator-prey" (Appendix C.1): predators on a ``grid x grid`` board move
up/down/left/right, stay, or ``catch``. Moving into an occupied cell or off the board, and
``catch`` with no prey in the four neighbouring cells, are unavailable. A prey is captured
when two or more adjacent predators ``catch`` it in the same step: the team gets ``reward``
(ReMIX: 10) and the prey and its catchers leave the board. A prey with exactly one catching
neighbour costs ``-punishment`` (the "P" of QTRAN / "p" of ReMIX). Prey then move, in index
order, to a uniformly random free neighbouring cell or stay. An episode ends when every
predator or every prey has left the board, or after ``limit`` steps (ReMIX: 200).

Defaults are ReMIX's: 8 predators, 8 prey, 10x10, 5x5 view, punishment 1.5 (ReMIX runs
0, 0.5, 1.5, 2), reward 10, limit 200. QTRAN's own rules (a catch without a ``catch`` action,
prey regenerating, a fixed 100 steps) are the ``predator_prey_qtran`` family
(``envs/predator_prey_qtran.py``), built on this board.

Partial observability: an agent sees the ``view x view`` window centred on itself, with
channels other-and-own predators / prey / outside-the-board, plus its own (row, col) scaled
to [0, 1]; a removed predator observes zeros and can only ``stay``. The state is the full
board: predator and prey channels, ``2 * grid * grid``. ``score`` = prey captured so far;
``won`` = every prey captured (``has_won`` only where that is possible: ``2 * prey <= agents``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from marlctl.envs import drawing
from marlctl.envs.base import EnvFamily, EnvSpec
from marlctl.envs.errors import EnvOptionError
from marlctl.envs.vector import VectorGame, options_game_factories

ACTION_NAMES = ("up", "down", "left", "right", "stay", "catch")
STAY, CATCH = 4, 5
DELTAS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1], [0, 0]], dtype=np.int64)  # [5, 2] (row, col)

FAMILY = EnvFamily(
    name="predator_prey",
    summary="QTRAN/ReMIX modified predator-prey: two predators must catch together, lone tries punished",
    options=(
        ("agents", "predators (8)"),
        ("prey", "prey (8)"),
        ("grid", "board side (10)"),
        ("view", "odd side of each predator's view window (5)"),
        ("punishment", "penalty P >= 0 for a lone catch attempt (1.5)"),
        ("reward", "team reward per captured prey (10)"),
        ("limit", "episode limit in steps (200)"),
    ),
)


@dataclass(frozen=True)
class PredatorPreyConfig:
    """Options of a ``predator_prey`` id (defaults: ReMIX Appendix D.1)."""

    family: ClassVar[str] = "predator_prey"
    """The env family whose ids these options belong to (names it in error messages)."""
    agents: int = 8
    """Number of predators (the learning agents)."""
    prey: int = 8
    """Number of prey, moving at random."""
    grid: int = 10
    """Side of the square board."""
    view: int = 5
    """Side (odd) of the square window each predator observes, centred on itself."""
    punishment: float = 1.5
    """P: the team pays -P for each prey with exactly one catching predator."""
    reward: float = 10.0
    """Team reward per captured prey."""
    limit: int = 200
    """Episode limit in steps."""

    def __post_init__(self) -> None:
        problems = []
        if self.agents < 2:
            problems.append(f"agents must be >= 2 (a capture needs two), got {self.agents}")
        if self.prey < 1:
            problems.append(f"prey must be >= 1, got {self.prey}")
        if self.grid < 2:
            problems.append(f"grid must be >= 2, got {self.grid}")
        elif self.agents + self.prey > self.grid * self.grid:
            problems.append(f"agents + prey ({self.agents + self.prey}) must fit on the {self.grid}x{self.grid} grid")
        if self.view < 1 or self.view % 2 == 0:
            problems.append(f"view must be an odd number >= 1, got {self.view}")
        if not np.isfinite(self.punishment) or self.punishment < 0:
            problems.append(f"punishment must be a finite number >= 0 (the penalty is -punishment), got {self.punishment}")
        if not np.isfinite(self.reward):
            problems.append(f"reward must be finite, got {self.reward}")
        if self.limit < 1:
            problems.append(f"limit must be >= 1, got {self.limit}")
        if problems:
            raise EnvOptionError(f"{self.family}: " + "; ".join(problems))


class PredatorPreyGame(VectorGame):
    """B predator-prey boards stepped together (loops over agents and prey, vectorized over B)."""

    def __init__(self, env_id: str, cfg: PredatorPreyConfig, num_envs: int) -> None:
        super().__init__(num_envs)
        self.cfg = cfg
        N, P, G, V = cfg.agents, cfg.prey, cfg.grid, cfg.view
        self.spec = EnvSpec(
            env_id=env_id,
            n_agents=N,
            obs_dim=3 * V * V + 2,
            state_dim=2 * G * G,
            n_actions=len(ACTION_NAMES),
            episode_limit=cfg.limit,
            fully_observable=False,
            has_won=2 * P <= N,
            action_names=ACTION_NAMES,
        )
        self.apos_BN2 = np.zeros((num_envs, N, 2), dtype=np.int64)
        self.ppos_BP2 = np.zeros((num_envs, P, 2), dtype=np.int64)
        self.aalive_BN = np.zeros((num_envs, N), dtype=bool)
        self.palive_BP = np.zeros((num_envs, P), dtype=bool)
        self.captured_B = np.zeros(num_envs, dtype=np.int64)
        self._b = np.arange(num_envs)

    # -- board helpers -------------------------------------------------------------------
    def _occupancy(self) -> np.ndarray:
        """``[B, G, G]`` int8: 0 empty, 1 predator, 2 prey."""
        G = self.cfg.grid
        occ = np.zeros((self.num_envs, G, G), dtype=np.int8)
        bN = np.broadcast_to(self._b[:, None], self.aalive_BN.shape)
        m = self.aalive_BN
        occ[bN[m], self.apos_BN2[..., 0][m], self.apos_BN2[..., 1][m]] = 1
        bP = np.broadcast_to(self._b[:, None], self.palive_BP.shape)
        m = self.palive_BP
        occ[bP[m], self.ppos_BP2[..., 0][m], self.ppos_BP2[..., 1][m]] = 2
        return occ

    def _free(self, occ: np.ndarray, target_BK2: np.ndarray) -> np.ndarray:
        """``[B, K]`` bool: target cell on the board and empty."""
        G = self.cfg.grid
        on = ((target_BK2 >= 0) & (target_BK2 < G)).all(axis=-1)
        r, c = np.clip(target_BK2[..., 0], 0, G - 1), np.clip(target_BK2[..., 1], 0, G - 1)
        return on & (occ[self._b[:, None], r, c] == 0)

    def _adjacent(self) -> np.ndarray:
        """``[B, N, P]`` bool: live prey p is in one of live predator n's four neighbouring cells."""
        d = np.abs(self.apos_BN2[:, :, None, :] - self.ppos_BP2[:, None, :, :]).sum(-1)  # [B, N, P]
        return (d == 1) & self.aalive_BN[:, :, None] & self.palive_BP[:, None, :]

    def _move_predators(self, actions_BN: np.ndarray, occ: np.ndarray) -> None:
        """Live predators move in index order (actions < STAY); a cell taken earlier in this step blocks later
        movers. Updates ``occ`` in place."""
        for n in range(self.cfg.agents):
            a_B = actions_BN[:, n]
            moving_B = self.aalive_BN[:, n] & (a_B < STAY)
            target_B2 = self.apos_BN2[:, n] + DELTAS[np.minimum(a_B, STAY)]
            go_B = moving_B & self._free(occ, target_B2[:, None])[:, 0]
            if go_B.any():
                old = self.apos_BN2[go_B, n]
                occ[self._b[go_B], old[:, 0], old[:, 1]] = 0
                self.apos_BN2[go_B, n] = target_B2[go_B]
                occ[self._b[go_B], target_B2[go_B, 0], target_B2[go_B, 1]] = 1

    def _move_prey(self, occ: np.ndarray, uniform_action: bool) -> None:
        """Live prey move in index order; updates ``occ`` in place. ``uniform_action``: each picks one of the
        five actions uniformly and stays if the target is taken (QTRAN); otherwise a uniformly random free
        neighbouring cell or stay (ReMIX)."""
        u_BP = self.rng.uniform(self.cfg.prey)
        for p in range(self.cfg.prey):
            live_B = self.palive_BP[:, p]
            targets_B52 = self.ppos_BP2[:, p, None, :] + DELTAS[None]  # [B, 5, 2]
            options_B5 = self._free(occ, targets_B52)
            options_B5[:, STAY] = True
            if uniform_action:
                choice_B = np.minimum((u_BP[:, p] * len(DELTAS)).astype(np.int64), STAY)
                choice_B = np.where(options_B5[self._b, choice_B], choice_B, STAY)
            else:
                pick_B = np.floor(u_BP[:, p] * options_B5.sum(axis=1)).astype(np.int64)  # k-th free option
                choice_B = np.argmax(np.cumsum(options_B5, axis=1) > pick_B[:, None], axis=1)
            go_B = live_B & (choice_B != STAY)
            if go_B.any():
                old = self.ppos_BP2[go_B, p]
                new = targets_B52[go_B, choice_B[go_B]]
                occ[self._b[go_B], old[:, 0], old[:, 1]] = 0
                self.ppos_BP2[go_B, p] = new
                occ[self._b[go_B], new[:, 0], new[:, 1]] = 2

    # -- VectorGame ----------------------------------------------------------------------
    def reset_where(self, where_B: np.ndarray) -> None:
        N, P, G = self.cfg.agents, self.cfg.prey, self.cfg.grid
        cells_BK = np.argsort(self.rng.uniform(G * G, where_B), axis=1)[:, : N + P]  # distinct cells
        rc_BK2 = np.stack([cells_BK // G, cells_BK % G], axis=-1)
        self.apos_BN2[where_B] = rc_BK2[where_B, :N]
        self.ppos_BP2[where_B] = rc_BK2[where_B, N:]
        self.aalive_BN[where_B] = True
        self.palive_BP[where_B] = True
        self.captured_B[where_B] = 0

    def transition(self, actions_BN: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.cfg
        # Catching: per prey, count adjacent predators choosing `catch` this step.
        catching_BN = self.aalive_BN & (actions_BN == CATCH)
        tries_BNP = self._adjacent() & catching_BN[:, :, None]
        n_catchers_BP = tries_BNP.sum(axis=1)
        captured_BP = n_catchers_BP >= 2
        lone_BP = n_catchers_BP == 1
        reward_B = cfg.reward * captured_BP.sum(axis=1) - cfg.punishment * lone_BP.sum(axis=1)
        self.aalive_BN &= ~(tries_BNP & captured_BP[:, None, :]).any(axis=2)
        self.palive_BP &= ~captured_BP
        self.captured_B += captured_BP.sum(axis=1)

        occ = self._occupancy()
        self._move_predators(actions_BN, occ)
        self._move_prey(occ, uniform_action=False)

        all_prey_B = ~self.palive_BP.any(axis=1)
        terminated_B = all_prey_B | ~self.aalive_BN.any(axis=1)
        return reward_B.astype(np.float32), terminated_B, all_prey_B, self.captured_B.astype(np.float64)

    def observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        occ = self._occupancy()  # [B, G, G]
        obs_BNO, state_BS = self._views(occ)
        B, N = self.num_envs, self.cfg.agents
        avail_BNA = np.zeros((B, N, len(ACTION_NAMES)), dtype=bool)
        avail_BNA[..., : STAY + 1] = self._move_avail(occ)
        avail_BNA[..., CATCH] = self._adjacent().any(axis=2)
        avail_BNA[~self.aalive_BN] = np.eye(len(ACTION_NAMES), dtype=bool)[STAY]
        return obs_BNO, state_BS, avail_BNA

    def _views(self, occ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Observations ``[B, N, 3 V V + 2]`` (view window + own position) and state ``[B, 2 G G]``."""
        B, N, G, V = self.num_envs, self.cfg.agents, self.cfg.grid, self.cfg.view
        R = V // 2
        # Channels on a board padded by R: predators, prey, outside-the-board.
        padded = np.zeros((B, G + 2 * R, G + 2 * R, 3), dtype=np.float32)
        padded[:, R : R + G, R : R + G, 0] = occ == 1
        padded[:, R : R + G, R : R + G, 1] = occ == 2
        padded[..., 2] = 1.0
        padded[:, R : R + G, R : R + G, 2] = 0.0
        # Window of agent n spans padded rows/cols pos .. pos + V - 1.
        rows_BNV = self.apos_BN2[..., 0, None] + np.arange(V)
        cols_BNV = self.apos_BN2[..., 1, None] + np.arange(V)
        win = padded[self._b[:, None, None, None], rows_BNV[..., :, None], cols_BNV[..., None, :]]  # [B, N, V, V, 3]
        view_BNO = win.transpose(0, 1, 4, 2, 3).reshape(B, N, 3 * V * V)
        own_BN2 = self.apos_BN2.astype(np.float32) / max(G - 1, 1)
        obs_BNO = np.concatenate([view_BNO, own_BN2], axis=-1) * self.aalive_BN[..., None]
        state_BS = np.concatenate([(occ == 1).reshape(B, -1), (occ == 2).reshape(B, -1)], axis=1).astype(np.float32)
        return obs_BNO.astype(np.float32), state_BS

    def _move_avail(self, occ: np.ndarray) -> np.ndarray:
        """``[B, N, 5]`` bool: the four moves onto a free cell on the board, and stay (always)."""
        B, N = self.num_envs, self.cfg.agents
        avail_BN5 = np.ones((B, N, STAY + 1), dtype=bool)
        targets_BN42 = self.apos_BN2[:, :, None, :] + DELTAS[None, None, :STAY]  # [B, N, 4, 2]
        avail_BN5[..., :STAY] = self._free(occ, targets_BN42.reshape(B, N * 4, 2)).reshape(B, N, 4)
        return avail_BN5

    def render(self, b: int) -> np.ndarray:
        """The board: predators as blue dots, prey as red dots."""
        G, cell = self.cfg.grid, max(12, 320 // self.cfg.grid)
        img = drawing.canvas(G, G, cell)
        for n in np.flatnonzero(self.aalive_BN[b]):
            drawing.dot(img, int(self.apos_BN2[b, n, 0]), int(self.apos_BN2[b, n, 1]), cell, drawing.BLUE)
        for p in np.flatnonzero(self.palive_BP[b]):
            drawing.dot(img, int(self.ppos_BP2[b, p, 0]), int(self.ppos_BP2[b, p, 1]), cell, drawing.RED, 0.45)
        return img


make, make_batched = options_game_factories('predator_prey', PredatorPreyConfig, PredatorPreyGame, 'predator_prey:agents=2,prey=1,grid=5')
