"""Google Research Football (``grf:<scenario>``): the real GRF engine, one engine per worker process.

Ids: ``grf:academy_3_vs_1_with_keeper``, options ``reward=scoring`` (default) or
``reward=scoring+checkpoints`` (GRF's ``scoring,checkpoints``), ``limit=`` (episode limit).

Agents per scenario (the usual choice of the GRF MARL papers: MAPPO "The Surprising
Effectiveness of PPO" App. / HAPPO / MAT for the multi-player academies, CDS for 3 vs 1):

==========================================  ======  ===========================================
scenario                                    agents  note
==========================================  ======  ===========================================
academy_empty_goal_close                    1       single attacker, empty goal
academy_empty_goal                          1
academy_run_to_score                        1
academy_run_to_score_with_keeper            1
academy_pass_and_shoot_with_keeper          2       MAPPO/HAPPO "PS"
academy_run_pass_and_shoot_with_keeper      2       MAPPO/HAPPO "RPS"
academy_3_vs_1_with_keeper                  3       CDS, MAPPO "3v.1"
academy_corner                              10      MAPPO/HAPPO "Corner" (10 outfield players)
academy_counterattack_easy                  4       MAPPO/HAPPO "CA-easy"
academy_counterattack_hard                  4       MAPPO/HAPPO "CA-hard"
academy_single_goal_versus_lazy             10      10 outfield players vs a lazy team
==========================================  ======  ===========================================

Views: agent ``i``'s observation is GRF's ``simple115v2`` vector of its controlled player
(115 floats: both teams' positions and directions, ball position/direction/ownership, the
active-player one-hot at ``[97:108]``, game mode). ``simple115v2`` is a full-pitch view, so
the global state is agent 0's vector plus every agent's active-player one-hot:
``state_dim = 115 + 11 * n_agents``. All 19 default actions are always available.

Reward: the mean over controlled players of GRF's per-player reward, so ``scoring`` pays
+1 per goal scored and -1 per goal conceded; ``checkpoints`` adds GRF's 0.1 per checkpoint
(collected by the ball carrier, hence 0.1 / n_agents per checkpoint in the mean).
``won`` = the episode ended with the left team ahead (the agents scored); ``score`` = goal
difference (left - right). Episodes end when the engine ends them (goal, ball out of play,
possession change, as each academy scenario says) or are truncated at ``limit`` steps:
150 by default, the academy episode limit of the GRF MARL papers (CDS, Li et al. 2021;
pymarl2's GRF wrapper ``time_limit=150``); the engine's own ``game_duration`` is 400 (3000 for
``single_goal_versus_lazy``) and is never reached first.

Determinism (measured on gfootball 2.10.2 here): episode ``k`` of a stream runs with the
engine seed ``SeedSequence([stream_seed, k])`` (``game_engine_random_seed``) and
``reverse_team_processing=False``; the same seed and actions replayed the same episode bit for
bit (every observation, reward and ending), in the same process and across processes: two
fresh engines per scenario, two episodes each (seeded, then continued), random actions, on all
11 academy scenarios above (measured 2026-11-21, 45..300 steps per scenario). The seeding contract of :mod:`marlctl.envs.vector` holds: ``reset(seed, index=b)``
of a single env replays batched environment ``b``.

Batched form: ``B`` engines in ``B`` worker processes (:mod:`marlctl.envs.grf_worker`,
fresh interpreters), stepped in parallel (all actions sent, then all answers read), with
auto-reset and ``final_*`` views. Workers start lazily on the first ``reset``, are closed by
``close()`` and at interpreter exit, and a worker that dies raises :class:`EngineWorkerError`.
``render()`` draws a 2D minimap (pitch, both teams, controlled players ringed, ball) from the
engine's raw observation; no window is ever opened.
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np
from marlctl.envs.base import BatchedEnv, BatchStep, Env, EnvFamily, EnvSpec, TimeStep
from marlctl.envs.drawing import BLUE, WHITE, YELLOW
from marlctl.envs.errors import (
    BackendUnavailableError,
    EnvError,
    EnvOptionError,
    EpisodeOverError,
    UnknownEnvError,
)
from marlctl.envs.grf_worker import EngineConfig
from marlctl.envs.vector import LoopBatchedEnv, check_seed, env_seed, fresh_seed, validate_actions

# Scenario -> number of agent-controlled left players (see the table in the module docstring).
SCENARIO_AGENTS: dict[str, int] = {
    "academy_empty_goal_close": 1,
    "academy_empty_goal": 1,
    "academy_run_to_score": 1,
    "academy_run_to_score_with_keeper": 1,
    "academy_pass_and_shoot_with_keeper": 2,
    "academy_run_pass_and_shoot_with_keeper": 2,
    "academy_3_vs_1_with_keeper": 3,
    "academy_corner": 10,
    "academy_counterattack_easy": 4,
    "academy_counterattack_hard": 4,
    "academy_single_goal_versus_lazy": 10,
}

# GRF's default action set, in engine order.
ACTION_NAMES: tuple[str, ...] = (
    "idle", "left", "top_left", "top", "top_right", "right", "bottom_right", "bottom", "bottom_left",
    "long_pass", "high_pass", "short_pass", "shot", "sprint", "release_direction", "release_sprint",
    "sliding", "dribble", "release_dribble",
)
OBS_DIM = 115  # simple115v2
ACTIVE = slice(97, 108)  # the active-player one-hot inside simple115v2
REWARDS = {"scoring": "scoring", "scoring+checkpoints": "scoring,checkpoints"}
START_TIMEOUT_S = 180.0  # engine start (import + scenario build) on a loaded 2-core machine
STEP_TIMEOUT_S = 120.0  # one reset/step/render answer

FAMILY = EnvFamily(
    name="grf",
    summary="Google Research Football academy scenarios (real GRF engine, simple115v2 views, 19 actions)",
    scenarios=tuple(SCENARIO_AGENTS),
    options=(
        ("reward", "scoring | scoring+checkpoints (scoring)"),
        ("limit", "episode limit in steps (150)"),
    ),
    backend_module="gfootball",
)


class EngineWorkerError(EnvError):
    """A GRF engine worker process failed to start, died, or stopped answering."""


@dataclass(frozen=True)
class GRFConfig:
    """Options of a ``grf:<scenario>`` id."""

    reward: str = "scoring"
    """``scoring`` (+1/-1 per goal) or ``scoring+checkpoints`` (adds GRF's dense checkpoint reward)."""
    limit: int = 150
    """Episode limit in steps (150 = the academy limit of the GRF MARL papers)."""

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise EnvOptionError(f"grf: reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        if not 1 <= self.limit <= 3000:
            raise EnvOptionError(f"grf: limit must be in 1..3000 steps, got {self.limit}")


def availability() -> tuple[bool, str]:
    """Whether the football engine can run here, for ``marlctl envs list``."""
    if importlib.util.find_spec("gfootball") is None:
        return False, _INSTALL_HINT
    return True, "gfootball engine installed (one engine per worker process)"


_INSTALL_HINT = (
    "the Google Research Football engine is not installed: pip install 'marlctl[grf]' (gfootball==2.10.2, "
    "built from source; it needs the SDL2/Boost system libraries, see scripts/setup.sh)"
)


def _config(scenario: str | None, options: dict[str, str]) -> tuple[EnvSpec, EngineConfig, GRFConfig]:
    from marlctl.envs.registry import config_from_options, format_env_id

    if scenario not in SCENARIO_AGENTS:
        raise UnknownEnvError(
            f"unknown GRF scenario {scenario!r}; valid: {', '.join(SCENARIO_AGENTS)} "
            "(e.g. grf:academy_3_vs_1_with_keeper)"
        )
    cfg = config_from_options(GRFConfig, "grf", options)
    if importlib.util.find_spec("gfootball") is None:
        raise BackendUnavailableError(f"grf:{scenario}: {_INSTALL_HINT}")
    n = SCENARIO_AGENTS[scenario]
    spec = EnvSpec(
        env_id=format_env_id("grf", scenario, options),
        n_agents=n,
        obs_dim=OBS_DIM,
        state_dim=OBS_DIM + 11 * n,
        n_actions=len(ACTION_NAMES),
        episode_limit=cfg.limit,
        fully_observable=False,
        has_won=True,
        action_names=ACTION_NAMES,
    )
    return spec, EngineConfig(scenario=scenario, n_agents=n, rewards=REWARDS[cfg.reward]), cfg


def episode_seed(stream_seed: int, episode: int) -> int:
    """The engine seed (``game_engine_random_seed``) of episode ``episode`` of a stream."""
    return int(np.random.SeedSequence([stream_seed, episode]).generate_state(1, np.uint32)[0]) % 2_000_000_000


def state_of(obs_NO: np.ndarray) -> np.ndarray:
    """Global state ``[115 + 11 N]``: agent 0's simple115v2 vector plus every agent's active one-hot."""
    return np.concatenate([obs_NO[0], obs_NO[:, ACTIVE].reshape(-1)]).astype(np.float32)


# gym 0.25's import/step banners in a worker's stderr; left out when quoting a dead worker's last messages.
_GYM_NOISE = ("Gym has been unmaintained", "Gymnasium", "migration guide", "new_step_api", "deprecation(")

_LIVE: weakref.WeakSet[_Worker] = weakref.WeakSet()


@atexit.register
def _close_all_workers() -> None:
    for worker in list(_LIVE):
        worker.close()


class _Worker:
    """Parent-side handle of one engine process: send a command, receive its answer, detect death."""

    def __init__(self, engine: EngineConfig, label: str) -> None:
        self.label = label
        parent_sock, child_sock = socket.socketpair()
        self._stderr = tempfile.TemporaryFile()  # the engine's own messages, quoted if it dies
        cmd = [
            sys.executable, "-m", "marlctl.envs.grf_worker",
            str(child_sock.fileno()), engine.scenario, str(engine.n_agents), engine.rewards,
        ]
        self.proc = subprocess.Popen(
            cmd, pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._stderr, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        _LIVE.add(self)
        ready = self._recv(START_TIMEOUT_S, "start")
        if ready[0] != "ready":
            raise EngineWorkerError(f"{label}: unexpected first message from the engine worker: {ready[0]!r}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, msg: tuple) -> None:
        if not self.alive():
            raise self._dead(msg[0])
        try:
            self.conn.send(msg)
        except OSError as exc:
            raise self._dead(msg[0]) from exc

    def recv(self, what: str) -> tuple:
        return self._recv(STEP_TIMEOUT_S, what)

    def _recv(self, timeout_s: float, what: str) -> tuple:
        deadline = time.monotonic() + timeout_s
        while not self.conn.poll(0.2):
            if not self.alive() and not self.conn.poll(0):
                raise self._dead(what)
            if time.monotonic() > deadline:
                self.close()
                raise EngineWorkerError(f"{self.label}: the GRF engine worker did not answer {what} in {timeout_s:.0f} s")
        try:
            reply = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise self._dead(what) from exc
        if reply[0] == "error":
            if what == "start":
                self.close()
                raise BackendUnavailableError(f"{self.label}: the GRF engine failed to start:\n{reply[1]}")
            raise EngineWorkerError(f"{self.label}: the GRF engine failed during {what}:\n{reply[1]}")
        return reply

    def _dead(self, what: str) -> EngineWorkerError:
        try:
            code = self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            code = None
        tail = ""
        if not self._stderr.closed:
            self._stderr.seek(0)
            lines = [
                ln for ln in self._stderr.read().decode(errors="replace").splitlines()
                if ln.strip() and not any(noise in ln for noise in _GYM_NOISE)
            ]
            tail = "\n".join(lines[-5:])
        self.close()
        return EngineWorkerError(
            f"{self.label}: the GRF engine worker process (pid {self.proc.pid}) died (exit code {code}) "
            f"during {what}; close this environment and make a new one" + (f"\nits last messages:\n{tail}" if tail else "")
        )

    def close(self) -> None:
        _LIVE.discard(self)
        if self.alive():
            try:
                self.conn.send(("close",))
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5.0)
        self.conn.close()
        self._stderr.close()


class GRFEnv:
    """One GRF engine as a single ``Env`` (the engine lives in a worker process started on first reset)."""

    def __init__(self, spec: EnvSpec, engine: EngineConfig) -> None:
        self.spec = spec
        self.engine = engine
        self._worker: _Worker | None = None
        self._stream: int | None = None  # stream seed of the current run
        self._episode = 0  # episodes started in this stream
        self._t = 0
        self._done = True
        self._avail_NA = np.ones((spec.n_agents, spec.n_actions), dtype=bool)
        self._obs_NO: np.ndarray | None = None

    # -- pipelined halves, used directly by GRFBatchedEnv to step B engines in parallel ----------

    def _ensure_worker(self) -> _Worker:
        if self._worker is None:
            self._worker = _Worker(self.engine, self.spec.env_id)
        return self._worker

    def send_reset(self, seed: int | None = None, index: int = 0) -> None:
        if seed is not None:
            self._stream, self._episode = env_seed(check_seed(seed), index), 0
        elif self._stream is None:
            self._stream, self._episode = env_seed(fresh_seed(), index), 0
        self._ensure_worker().send(("reset", episode_seed(self._stream, self._episode)))
        self._episode += 1

    def recv_reset(self) -> TimeStep:
        assert self._worker is not None
        _, obs_NO, goal_diff = self._worker.recv("reset")
        self._t, self._done, self._obs_NO = 0, False, obs_NO
        return TimeStep(obs_NO, state_of(obs_NO), self._avail_NA.copy(), info={"won": False, "score": float(goal_diff)})

    def send_step(self, actions: np.ndarray) -> None:
        if self._done or self._worker is None:
            raise EpisodeOverError(
                f"{self.spec.env_id}: step() after the episode ended (or before reset()); call reset() first"
            )
        actions_N = validate_actions(actions, self._avail_NA, self.spec)
        self._worker.send(("step", actions_N))

    def recv_step(self) -> TimeStep:
        assert self._worker is not None
        _, obs_NO, reward_N, engine_done, goal_diff = self._worker.recv("step")
        self._t += 1
        terminated = bool(engine_done)
        truncated = not terminated and self._t >= self.spec.episode_limit
        self._done = terminated or truncated
        self._obs_NO = obs_NO
        info = {"won": bool(self._done and goal_diff > 0), "score": float(goal_diff)}
        return TimeStep(
            obs_NO, state_of(obs_NO), self._avail_NA.copy(), float(reward_N.mean()), terminated, truncated, info
        )

    # -- the Env protocol ------------------------------------------------------------------------

    def reset(self, seed: int | None = None, *, index: int = 0) -> TimeStep:
        """Start an episode; ``seed`` with ``index`` = batched environment ``index``'s stream, None continues."""
        if seed is not None:
            check_seed(seed)
        env_seed(0, index)  # validates index
        self.send_reset(seed, index)
        return self.recv_reset()

    def step(self, actions: np.ndarray) -> TimeStep:
        self.send_step(actions)
        return self.recv_step()

    def render(self) -> np.ndarray:
        """A 2D minimap ``[132, 296, 3]`` uint8 of the current engine state (pitch, teams, ball)."""
        if self._worker is None or self._obs_NO is None:
            raise EpisodeOverError(f"{self.spec.env_id}: call reset() before render()")
        self._worker.send(("render",))
        _, left_P2, right_P2, ball_3, active_N = self._worker.recv("render")
        return draw_pitch(left_P2, right_P2, ball_3, active_N)

    def close(self) -> None:
        self._done = True
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - best effort at garbage collection
            pass


class GRFBatchedEnv(LoopBatchedEnv):
    """``B`` GRF engines in ``B`` worker processes, stepped in parallel, with auto-reset and ``final_*`` views."""

    envs: list[GRFEnv]

    def reset(self, seed: int | None = None) -> BatchStep:
        if seed is None and not self._seeded:
            seed = fresh_seed()
        if seed is not None:
            check_seed(seed)
        for b, env in enumerate(self.envs):
            env.send_reset(seed, b)
        steps = [env.recv_reset() for env in self.envs]
        self._seeded = True
        out = self._stack(steps, steps)
        self._avail = out.avail
        return out

    def step(self, actions: np.ndarray) -> BatchStep:
        if self._avail is None:
            raise EpisodeOverError(f"{self.spec.env_id}: call reset() before step()")
        actions_BN = validate_actions(actions, self._avail, self.spec)  # the whole batch, before any engine steps
        try:
            for env, a in zip(self.envs, actions_BN, strict=True):
                env.send_step(a)
            finals = [env.recv_step() for env in self.envs]
            for env, ts in zip(self.envs, finals, strict=True):
                if ts.done:
                    env.send_reset()
            nexts = [env.recv_reset() if ts.done else ts for env, ts in zip(self.envs, finals, strict=True)]
        except EngineWorkerError:
            self.close()  # the other workers may hold unread answers: this batch cannot continue in step
            raise
        out = self._stack(nexts, finals)
        self._avail = out.avail
        return out


# -- minimap ------------------------------------------------------------------------------------

_SCALE = 128  # pixels per pitch unit: x in [-1, 1], y in [-0.42, 0.42]
_MARGIN = 12
_W = 2 * _SCALE + 2 * _MARGIN + 16  # room for the goals
_H = int(round(0.84 * _SCALE)) + 2 * _MARGIN
PITCH = (46, 120, 56)
LINE = (230, 235, 230)
LEFT, RIGHT, BALL = YELLOW, BLUE, WHITE  # the games' palette (envs/drawing.py)
RING = (220, 40, 40)


def _px(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cx = np.round((np.asarray(x) + 1.0) * _SCALE).astype(int) + _MARGIN + 8
    cy = np.round((np.asarray(y) + 0.42) * _SCALE).astype(int) + _MARGIN
    return cx, cy


def _disc(img: np.ndarray, cx: int, cy: int, r: float, color: tuple[int, int, int], ring: bool = False) -> None:
    yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    mask = (d2 <= r * r) & (d2 >= (r - 1.5) ** 2) if ring else d2 <= r * r
    img[mask] = color


def draw_pitch(left_P2: np.ndarray, right_P2: np.ndarray, ball_3: np.ndarray, active_N: np.ndarray) -> np.ndarray:
    """Minimap ``[H, W, 3]`` uint8: green pitch with lines and goals, left team yellow, right blue,
    the agent-controlled left players ringed red, the ball white."""
    img = np.zeros((_H, _W, 3), dtype=np.uint8)
    img[:] = PITCH
    (x0, x1), (y0, y1) = _px(np.array([-1.0, 1.0]), np.array([-0.42, 0.42]))
    img[y0, x0:x1 + 1] = LINE
    img[y1, x0:x1 + 1] = LINE
    img[y0:y1 + 1, x0] = LINE
    img[y0:y1 + 1, x1] = LINE
    xm = (x0 + x1) // 2
    img[y0:y1 + 1, xm] = LINE
    _, (g0, g1) = _px(np.zeros(2), np.array([-0.044, 0.044]))
    img[g0:g1 + 1, x0 - 6:x0] = LINE  # goal mouths
    img[g0:g1 + 1, x1 + 1:x1 + 7] = LINE
    for team, color in ((left_P2, LEFT), (right_P2, RIGHT)):
        xs, ys = _px(team[:, 0], team[:, 1])
        for cx, cy in zip(xs, ys, strict=True):
            _disc(img, int(cx), int(cy), 3.5, color)
    lx, ly = _px(left_P2[:, 0], left_P2[:, 1])
    for p in np.unique(active_N):
        if 0 <= p < len(left_P2):
            _disc(img, int(lx[p]), int(ly[p]), 6.0, RING, ring=True)
    bx, by = _px(ball_3[0], ball_3[1])
    _disc(img, int(bx), int(by), 2.5, BALL)
    return img


def make(scenario: str | None, options: dict[str, str]) -> Env:
    spec, engine, _ = _config(scenario, options)
    return GRFEnv(spec, engine)


def make_batched(scenario: str | None, options: dict[str, str], num_envs: int) -> BatchedEnv:
    spec, engine, _ = _config(scenario, options)
    return GRFBatchedEnv(lambda: GRFEnv(spec, engine), num_envs)
