"""One-step cooperative matrix games: the papers' payoff tables and any payoff tensor from a file.

Scenarios (each one step; every agent picks an action, the team gets the joint payoff):

- ``matrix:qtran`` - QTRAN (Son et al., 2019) Table 1a: 3x3, 8 at (A, A), -12 on the rest
  of row A and column A, 0 elsewhere; optimum (A, A) = 8.
- ``matrix:qtran21`` - QTRAN Appendix C.1 "Matrix game": 21x21, R = max(f1, f2),
  f1 = 5 - ((15-u1)/3)^2 - ((5-u2)/3)^2, f2 = 10 - (5-u1)^2 - (15-u2)^2; global optimum
  (5, 15) = 10, local optimum (15, 5) = 5.
- ``matrix:tad`` - TAD (Ye et al.) Table 1: 3x3 diagonal 10 / 5 / 1, -30 off the diagonal;
  optimum (0, 0) = 10, local optima (1, 1) and (2, 2).
- ``matrix:tad10`` - TAD Appendix D.1, Table 3 "Multi-task Matrix Game": ten 5x5 matrices.
  Each episode is one matrix drawn uniformly at random, its id observable (one-hot in
  every agent's observation and in the state); the optimum of every matrix is 10, so the
  optimal total over the ten is 100. The tables print rows = agent 2's action and
  columns = agent 1's, so ``payoff[a1, a2] = table[a2][a1]``. Values exactly as printed
  (row 4 of matrices 8 and 10 are identical in the paper). Option ``task=k`` (1..10) pins
  one matrix, e.g. to evaluate each in turn.
- ``matrix:file=PATH`` - an n-agent payoff tensor (``.npy`` or ``.json``: nested lists, or
  ``{"payoff": [...], "action_names": [...]}``), ``ndim = n_agents >= 2``, every axis >= 2;
  axes may differ in size: ``n_actions`` is the largest and the rest are masked unavailable.

Observation of every agent = state = one-hot of the matrix id (a constant 1 for one matrix):
the games are fully observable. ``won`` = the joint action reached the matrix's maximum;
``score`` = the payoff.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from marlctl.envs import drawing
from marlctl.envs.base import BatchedEnv, Env, EnvFamily, EnvSpec
from marlctl.envs.errors import EnvOptionError, PayoffFileError, UnknownEnvError
from marlctl.envs.vector import GameBatchedEnv, GameEnv, VectorGame

QTRAN_TABLE_1A = np.array(
    [
        [8.0, -12.0, -12.0],
        [-12.0, 0.0, 0.0],
        [-12.0, 0.0, 0.0],
    ]
)

TAD_TABLE_1 = np.array(
    [
        [10.0, -30.0, -30.0],
        [-30.0, 5.0, -30.0],
        [-30.0, -30.0, 1.0],
    ]
)


def qtran21_payoff() -> np.ndarray:
    """QTRAN Appendix C.1: the 21x21 game R(u1, u2) = max(f1, f2)."""
    u1, u2 = np.meshgrid(np.arange(21.0), np.arange(21.0), indexing="ij")  # [21, 21] each
    f1 = 5.0 - ((15.0 - u1) / 3.0) ** 2 - ((5.0 - u2) / 3.0) ** 2
    f2 = 10.0 - (5.0 - u1) ** 2 - (15.0 - u2) ** 2
    return np.maximum(f1, f2)


# TAD Table 3, as printed: TAD_TABLE_3[k][row = a2][col = a1].
TAD_TABLE_3 = np.array(
    [
        [  # Matrix 1
            [10, -10, -10, -10, -10],
            [-10, 9, 0, 0, 0],
            [-10, 0, 9, 0, 0],
            [-10, 0, 0, 9, 0],
            [-10, 0, 0, 0, 9],
        ],
        [  # Matrix 2
            [10, -10, 10, -10, 10],
            [-10, 10, -10, 10, -10],
            [10, -10, 10, -10, 10],
            [-10, 10, -10, 10, -10],
            [10, -10, 10, -10, 10],
        ],
        [  # Matrix 3
            [-20, -20, -20, -20, 10],
            [-20, -20, -20, 10, 9],
            [-20, -20, 10, 9, 9],
            [-20, 10, 9, 9, 9],
            [10, 9, 9, 9, 9],
        ],
        [  # Matrix 4
            [-20, -20, -20, -20, 10],
            [-20, -20, -20, 10, 9],
            [-20, -20, 10, 9, 8],
            [-20, 10, 9, 8, 7],
            [10, 9, 8, 7, 6],
        ],
        [  # Matrix 5
            [-20, -15, -10, -5, 6],
            [-20, -15, -10, 7, 5],
            [-20, -15, 8, 6, 4],
            [-20, 9, 7, 5, 3],
            [10, 8, 6, 4, 2],
        ],
        [  # Matrix 6
            [0.8, -16.0, -5.0, -10.9, -3.7],
            [-9.2, -4.2, 7.3, 9.6, -3.0],
            [-20.0, -18.1, 0.2, -4.3, 9.0],
            [-14.9, -2.0, -17.7, -17.6, -0.8],
            [3.8, 10.0, 7.5, 9.2, -10.7],
        ],
        [  # Matrix 7
            [-14.4, -15.8, 1.5, -5.4, 10.0],
            [-13.2, 5.8, -8.7, -2.2, -18.2],
            [-5.9, -19.0, -0.7, -2.0, -19.5],
            [0.8, 4.7, -14.8, 2.5, -4.1],
            [-11.3, -8.2, -20.0, -17.3, -17.6],
        ],
        [  # Matrix 8
            [-1.4, -19.2, 7.2, -5.5, 7.4],
            [-18.5, -20.0, -14.4, -17.6, -5.1],
            [3.6, 5.5, 10.0, -13.3, -4.9],
            [9.8, -12.3, 0.6, -16.5, -13.0],
            [-11.8, -20.0, -2.4, 7.1, -2.3],
        ],
        [  # Matrix 9
            [-4.5, -5.2, -8.4, -8.9, 5.5],
            [-12.4, -9.5, 8.8, 5.4, 4.4],
            [-4.6, 1.3, 5.5, 7.3, -6.8],
            [9.0, -18.7, -18.2, -13.7, -8.2],
            [2.2, -9.1, 10.0, 7.1, -20.0],
        ],
        [  # Matrix 10
            [-8.4, -1.8, -20.0, 7.3, -3.0],
            [-8.7, 1.7, 4.8, 2.0, -7.8],
            [-13.3, -3.2, 0.7, -1.8, -10.7],
            [9.8, -12.3, 0.6, -16.5, -13.0],
            [1.8, 2.9, -1.1, 10.0, 8.2],
        ],
    ],
    dtype=np.float64,
)

# scenario -> (payoffs [K, A1, ..., An], action names, summary)
SCENARIOS: dict[str, tuple[np.ndarray, tuple[str, ...], str]] = {
    "qtran": (QTRAN_TABLE_1A[None], ("A", "B", "C"), "QTRAN Table 1a, 3x3 non-monotonic, optimum (A,A)=8"),
    "qtran21": (qtran21_payoff()[None], (), "QTRAN App. C.1, 21x21, optimum (5,15)=10, local (15,5)=5"),
    "tad": (TAD_TABLE_1[None], (), "TAD Table 1, 3x3, optimum (0,0)=10, local (1,1)=5 and (2,2)=1"),
    "tad10": (TAD_TABLE_3.transpose(0, 2, 1).copy(), (), "TAD App. D.1, ten 5x5 matrices, id observed, optimum 10 each"),
}

FAMILY = EnvFamily(
    name="matrix",
    summary="one-step cooperative matrix games (QTRAN, TAD) or any payoff tensor from a file",
    scenarios=tuple(SCENARIOS),
    options=(
        ("file", "PATH of a .npy/.json n-agent payoff tensor, instead of a scenario"),
        ("task", "tad10 only: 1..10 pins one matrix (default 0 = uniformly random)"),
    ),
)


@dataclass(frozen=True)
class MatrixConfig:
    """Options of a matrix game id."""

    file: str = ""
    """Path of a payoff tensor (``.npy`` or ``.json``) used instead of a named scenario."""
    task: int = 0
    """For stacked games (``tad10``): 1..K pins matrix ``task``; 0 draws one uniformly per episode."""


def load_payoff_file(path: str | Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """Read and validate a payoff tensor; returns ``(payoff [A1, ..., An] float64, action_names)``."""
    p = Path(path)
    if p.suffix.lower() not in (".npy", ".json"):
        raise PayoffFileError(f"payoff file {str(p)!r} must end in .npy or .json")
    if not p.is_file():
        raise PayoffFileError(f"payoff file {str(p)!r} does not exist (or is not a file)")
    names: tuple[str, ...] = ()
    try:
        if p.suffix.lower() == ".npy":
            raw = np.load(p, allow_pickle=False)
        else:
            doc = json.loads(p.read_text())
            if isinstance(doc, dict):
                if "payoff" not in doc:
                    raise PayoffFileError(
                        f"payoff file {str(p)!r}: a JSON object needs a 'payoff' key (nested lists); got keys {sorted(doc)}"
                    )
                names = tuple(str(n) for n in doc.get("action_names", ()))
                doc = doc["payoff"]
    except PayoffFileError:
        raise
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise PayoffFileError(f"payoff file {str(p)!r} cannot be read: {exc}") from None
    if p.suffix.lower() == ".json":
        try:
            raw = np.array(doc)
        except ValueError:
            raise PayoffFileError(
                f"payoff file {str(p)!r}: ragged nested lists (rows of different lengths) are not a payoff tensor"
            ) from None
    if raw.dtype.kind not in "iuf":
        raise PayoffFileError(
            f"payoff file {str(p)!r}: entries must be numbers (int or float), got dtype {raw.dtype}"
            " (ragged nested lists or strings are not a payoff tensor)"
        )
    payoff = raw.astype(np.float64)
    if payoff.ndim < 2:
        raise PayoffFileError(
            f"payoff file {str(p)!r}: need one axis per agent and at least 2 agents, got shape {list(payoff.shape)}"
        )
    if min(payoff.shape) < 2:
        raise PayoffFileError(
            f"payoff file {str(p)!r}: every agent needs at least 2 actions, got shape {list(payoff.shape)}"
        )
    if not np.all(np.isfinite(payoff)):
        raise PayoffFileError(f"payoff file {str(p)!r}: entries must be finite (found NaN or Inf)")
    if names and len(names) != max(payoff.shape):
        raise PayoffFileError(
            f"payoff file {str(p)!r}: {len(names)} action_names for {max(payoff.shape)} actions"
        )
    return payoff, names


class MatrixGame(VectorGame):
    """K stacked one-step games over B environments; episode = one matrix, one joint action."""

    def __init__(
        self, env_id: str, payoffs: np.ndarray, num_envs: int, action_names: tuple[str, ...] = (), task: int = 0
    ) -> None:
        super().__init__(num_envs)
        self.payoffs = payoffs  # [K, A1, ..., An]
        self.n_tasks = payoffs.shape[0]
        self.n_agents = payoffs.ndim - 1
        self.sizes = payoffs.shape[1:]  # actions per agent
        n_actions = max(self.sizes)
        self.task = task
        self.best_K = payoffs.reshape(self.n_tasks, -1).max(axis=1)  # [K]
        obs_dim = self.n_tasks
        self.spec = EnvSpec(
            env_id=env_id,
            n_agents=self.n_agents,
            obs_dim=obs_dim,
            state_dim=obs_dim,
            n_actions=n_actions,
            episode_limit=1,
            fully_observable=True,
            has_won=True,
            action_names=action_names,
        )
        self._avail_NA = np.arange(n_actions)[None, :] < np.array(self.sizes)[:, None]  # [N, A]
        self.k_B = np.zeros(num_envs, dtype=np.int64)  # matrix of the current episode
        self.last_BN = np.full((num_envs, self.n_agents), -1, dtype=np.int64)

    def reset_where(self, where_B: np.ndarray) -> None:
        if self.n_tasks > 1:
            if self.task:
                self.k_B[where_B] = self.task - 1
            else:
                draw = self.rng.integers(self.n_tasks, 1, where_B)[:, 0]  # [B]
                self.k_B[where_B] = draw[where_B]
        self.last_BN[where_B] = -1

    def transition(self, actions_BN: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        payoff_B = self.payoffs[(self.k_B, *actions_BN.T)]  # [B]
        self.last_BN = actions_BN.copy()
        won_B = payoff_B >= self.best_K[self.k_B]
        return payoff_B.astype(np.float32), np.ones(self.num_envs, bool), won_B, payoff_B

    def observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        B, N = self.num_envs, self.n_agents
        state_BS = np.eye(self.n_tasks, dtype=np.float32)[self.k_B]  # [B, K]
        obs_BNO = np.repeat(state_BS[:, None, :], N, axis=1)  # [B, N, K]
        avail_BNA = np.broadcast_to(self._avail_NA, (B, N, self.spec.n_actions)).copy()
        return obs_BNO, state_BS, avail_BNA

    def render(self, b: int) -> np.ndarray:
        """Heat map of the payoff over agents 0 and 1 (others at their last action), last choice outlined."""
        last = self.last_BN[b]
        index: list[int | slice] = [int(self.k_B[b]), slice(None), slice(None)]
        index += [max(int(a), 0) for a in last[2:]]
        table = self.payoffs[tuple(index)]  # [A1, A2]
        cell = max(8, min(32, 256 // max(table.shape)))
        img = drawing.heat_map(table, cell)
        best = np.argwhere(table >= table.max())
        for r, c in best:
            drawing.dot(img, int(r), int(c), cell, drawing.YELLOW, frac=0.3)
        if last[0] >= 0:
            drawing.border(img, int(last[0]), int(last[1]), cell, drawing.WHITE)
        return img


def _resolve(scenario: str | None, options: dict[str, str]) -> tuple[str, np.ndarray, tuple[str, ...], int]:
    from marlctl.envs.registry import config_from_options, format_env_id

    cfg = config_from_options(MatrixConfig, "matrix", options)
    if cfg.file:  # the id names the file absolutely, so a run dir or a runner elsewhere finds it again
        options = {**options, "file": str(Path(cfg.file).expanduser().resolve())}
    env_id = format_env_id("matrix", scenario, options)
    if scenario is not None and cfg.file:
        raise EnvOptionError(f"{env_id!r}: give either a scenario or file=PATH, not both")
    if scenario is None:
        if not cfg.file:
            raise UnknownEnvError(
                f"{env_id!r} names no game; valid: {', '.join('matrix:' + s for s in SCENARIOS)} or matrix:file=PATH"
            )
        payoff, names = load_payoff_file(options["file"])
        payoffs = payoff[None]
    elif scenario in SCENARIOS:
        payoffs, names, _ = SCENARIOS[scenario]
    else:
        raise UnknownEnvError(
            f"unknown matrix scenario {scenario!r}; valid: {', '.join(SCENARIOS)} (or matrix:file=PATH)"
        )
    k = payoffs.shape[0]
    if cfg.task and k == 1:
        raise EnvOptionError(f"{env_id!r}: option task applies only to stacked games (tad10)")
    if not 0 <= cfg.task <= k:
        raise EnvOptionError(f"{env_id!r}: task must be in 1..{k} (or 0 = random), got {cfg.task}")
    return env_id, payoffs, names, cfg.task


def make(scenario: str | None, options: dict[str, str]) -> Env:
    env_id, payoffs, names, task = _resolve(scenario, options)
    return GameEnv(MatrixGame(env_id, payoffs, 1, names, task))


def make_batched(scenario: str | None, options: dict[str, str], num_envs: int) -> BatchedEnv:
    env_id, payoffs, names, task = _resolve(scenario, options)
    return GameBatchedEnv(MatrixGame(env_id, payoffs, num_envs, names, task))
