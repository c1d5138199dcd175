"""The process that owns one Google Research Football engine and answers reset/step/render over a pipe.

The GRF engine keeps global C++ state (one engine per process is what it supports), so every
marlctl GRF environment, single or batched, runs its engine here, in a fresh interpreter
(``python -m marlctl.envs.grf_worker FD SCENARIO N_AGENTS REWARDS``, talking over the inherited
socket ``FD``): no fork of a parent that holds JAX/torch threads, and unlike multiprocessing's
``spawn`` no re-import of the parent's ``__main__`` script. Imports only NumPy until
``worker_main`` builds the engine. Protocol (parent -> worker, pickled tuples):

- ``("reset", engine_seed)`` -> ``("ok", obs_NO, goal_diff)``
- ``("step", actions_N)`` -> ``("ok", obs_NO, reward_N, engine_done, goal_diff)``
- ``("render",)`` -> ``("ok", left_XY, right_XY, ball_XYZ, active_N)``
- ``("close",)`` -> the worker exits

Any exception is answered with ``("error", traceback_text)``; the worker exits when the parent's
end of the pipe closes.
"""
from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EngineConfig:
    """How the worker builds its engine (plain values: it crosses the process boundary)."""

    scenario: str
    """GRF scenario name, e.g. ``academy_3_vs_1_with_keeper``."""
    n_agents: int
    """Left-team players the agents control (``number_of_left_players_agent_controls``)."""
    rewards: str
    """GRF reward string: ``scoring`` or ``scoring,checkpoints``."""


def _build(cfg: EngineConfig) -> Any:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # headless: the engine never opens a window
    import warnings

    warnings.filterwarnings("ignore")  # gym 0.25's deprecation banners on every import/step
    import gfootball.env as football_env

    return football_env.create_environment(
        env_name=cfg.scenario,
        representation="simple115v2",
        number_of_left_players_agent_controls=cfg.n_agents,
        rewards=cfg.rewards,
        render=False,
        # reverse_team_processing would otherwise follow the parity of the first episode's seed
        # and then stay fixed for the engine's life; pinning it keeps an episode a function of its seed.
        other_config_options={"game_engine_random_seed": 0, "reverse_team_processing": False},
    )


def _goal_diff(env: Any) -> int:
    score = env.unwrapped.observation()[0]["score"]
    return int(score[0]) - int(score[1])


def _answer(env: Any, msg: tuple) -> tuple:
    cmd = msg[0]
    if cmd == "reset":
        env.unwrapped._config["game_engine_random_seed"] = int(msg[1])  # read by the next scenario build
        obs_NO = np.asarray(env.reset(), dtype=np.float32).reshape(-1, 115)
        return ("ok", obs_NO, _goal_diff(env))
    if cmd == "step":
        actions_N = [int(a) for a in msg[1]]
        obs, reward, done, _ = env.step(actions_N)
        obs_NO = np.asarray(obs, dtype=np.float32).reshape(-1, 115)
        reward_N = np.asarray(reward, dtype=np.float32).reshape(-1)
        return ("ok", obs_NO, reward_N, bool(done), _goal_diff(env))
    if cmd == "render":
        raw = env.unwrapped.observation()[0]
        active_N = np.array([int(o["active"]) for o in env.unwrapped.observation()], dtype=np.int64)
        return (
            "ok",
            np.asarray(raw["left_team"], np.float32),
            np.asarray(raw["right_team"], np.float32),
            np.asarray(raw["ball"], np.float32),
            active_N,
        )
    raise ValueError(f"unknown GRF worker command {cmd!r}")


def worker_main(conn: Connection, cfg: EngineConfig) -> None:
    """Serve one engine until told to close or the parent goes away."""
    try:
        env = _build(cfg)
    except BaseException:  # noqa: BLE001 - any build failure goes back to the parent as text
        conn.send(("error", traceback.format_exc()))
        conn.close()
        return
    conn.send(("ready",))
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "close":
                break
            try:
                reply = _answer(env, msg)
            except Exception:  # noqa: BLE001 - report, keep serving
                reply = ("error", traceback.format_exc())
            conn.send(reply)
    finally:
        try:
            env.close()
        finally:
            conn.close()


if __name__ == "__main__":
    _fd, _scenario, _n_agents, _rewards = sys.argv[1:5]
    worker_main(Connection(int(_fd)), EngineConfig(_scenario, int(_n_agents), _rewards))
