"""SMAC (``smac:<map>``): live StarCraft II through the StarCraft Multi-Agent Challenge's ``StarCraft2Env``.

Needs the SMAC package from its git repository (``pip install
git+https://github.com/oxwhirl/smac.git``; NOT the PyPI package ``smac``, an unrelated
optimizer), a StarCraft II install with the SMAC maps in ``$SC2PATH/Maps/SMAC_Maps``, and
``SC2PATH`` pointing at that install. Without them every ``smac:`` id raises
:class:`BackendUnavailableError` saying what is missing; ``smax:<map>`` runs the same scenario
in JAX without the game.

Ids: ``smac:<map>`` with option ``difficulty=`` (the built-in AI's level, ``1``..``9`` or
``A``; SMAC's default ``7``). Views are SMAC's own: ``get_obs()`` (per agent),
``get_state()`` and ``get_avail_actions()`` (a dead unit may only no-op); the reward is SMAC's
shaped team reward. ``won`` = SMAC's ``battle_won``; ``score`` = the fraction of enemy units
killed (``dead_enemies / n_enemies``), as ``smax:`` reports it. SMAC ends an episode at its
map's ``episode_limit`` with ``terminated=True``; the adapter reports that step as
``truncated`` (no side won: the battle was cut, not decided).

Seeding: a single env's ``reset(seed, index=b)`` relaunches the game with SMAC's ``seed=``
set to the stream seed of batched environment ``b`` (:func:`marlctl.envs.vector.env_seed`),
and ``reset()`` continues with the running game (SMAC restarts the scenario in place). StarCraft II does not promise bit-identical
replays from a seed (unit AI and network timing), so same-seed replays are best effort.
``render()`` draws a minimap (allies blue, enemies red, brightness = health) from the
``StarCraft2Env``'s unit table; no game window is used. The batched form is
:class:`~marlctl.envs.vector.LoopBatchedEnv` over ``B`` games.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from marlctl.envs.base import BatchedEnv, EnvFamily, EnvSpec, TimeStep
from marlctl.envs.errors import BackendUnavailableError, EnvOptionError, EpisodeOverError, UnknownEnvError
from marlctl.envs.vector import LoopBatchedEnv, check_seed, env_seed, validate_actions

# Every map in SMAC's map_param_registry (smac/env/starcraft2/maps/smac_maps.py).
MAPS: tuple[str, ...] = (
    "3m", "8m", "25m", "5m_vs_6m", "8m_vs_9m", "10m_vs_11m", "27m_vs_30m", "MMM", "MMM2", "2s3z", "3s5z",
    "3s5z_vs_3s6z", "3s_vs_3z", "3s_vs_4z", "3s_vs_5z", "1c3s5z", "2m_vs_1z", "corridor", "6h_vs_8z",
    "2s_vs_1sc", "so_many_baneling", "bane_vs_bane", "2c_vs_64zg",
)
DIFFICULTIES = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "A")
SMAC_GIT = "pip install git+https://github.com/oxwhirl/smac.git"

FAMILY = EnvFamily(
    name="smac",
    summary="SMAC on live StarCraft II (needs the game + SMAC maps + SC2PATH; smax:<map> runs without it)",
    scenarios=MAPS,
    options=(("difficulty", "built-in AI level 1..9 or A (7)"),),
    backend_module="smac",
)


@dataclass(frozen=True)
class SMACConfig:
    """Options of a ``smac:<map>`` id."""

    difficulty: str = "7"
    """Difficulty of StarCraft II's built-in AI (``1``..``9``, ``A``); SMAC's benchmark uses ``7``."""

    def __post_init__(self) -> None:
        if self.difficulty not in DIFFICULTIES:
            raise EnvOptionError(f"smac: difficulty must be one of {', '.join(DIFFICULTIES)}, got {self.difficulty!r}")


def _missing() -> list[str]:
    """What is missing for live StarCraft II (empty when everything is there)."""
    missing = []
    try:
        module = importlib.import_module("smac.env")
        if not hasattr(module, "StarCraft2Env"):
            raise ImportError
    except ImportError:
        missing.append(
            f"the SMAC package (smac.env.StarCraft2Env): {SMAC_GIT} -- not the PyPI package 'smac', "
            "which is an unrelated optimizer"
        )
    sc2 = os.environ.get("SC2PATH", "")
    if not sc2:
        missing.append("SC2PATH: set it to your StarCraft II install (with the SMAC maps in Maps/SMAC_Maps)")
    elif not Path(sc2).is_dir():
        missing.append(f"SC2PATH={sc2!r} is not a directory: point it at your StarCraft II install")
    return missing


def availability() -> tuple[bool, str]:
    """Whether live StarCraft II can run here, for ``marlctl envs list``."""
    missing = _missing()
    return (not missing, "StarCraft II via SMAC" if not missing else "missing " + "; ".join(missing))


def _unavailable(scenario: str, missing: list[str]) -> BackendUnavailableError:
    try:
        from marlctl.envs.smax import MAPS as SMAX_MAPS  # the map list only; imports no JAX
    except ImportError:
        SMAX_MAPS = ()
    alt = (
        f"smax:{scenario} runs the same scenario in JAX without the game"
        if scenario in SMAX_MAPS
        else f"smax:<map> runs StarCraft scenarios in JAX without the game ({', '.join(SMAX_MAPS) or 'see smax'})"
    )
    return BackendUnavailableError(
        f"smac:{scenario} needs live StarCraft II; missing: " + "; ".join(missing)
        + ". Also install StarCraft II and the SMAC maps (https://github.com/oxwhirl/smac#installing-starcraft-ii). "
        + alt
    )


def _config(scenario: str | None, options: dict[str, str]) -> tuple[str, str, SMACConfig]:
    from marlctl.envs.registry import config_from_options, format_env_id

    if scenario not in MAPS:
        raise UnknownEnvError(f"unknown SMAC map {scenario!r}; valid: {', '.join(MAPS)} (e.g. smac:3m)")
    cfg = config_from_options(SMACConfig, "smac", options)
    missing = _missing()
    if missing:
        raise _unavailable(scenario, missing)
    return scenario, format_env_id("smac", scenario, options), cfg


class SMACEnv:
    """One StarCraft II game through SMAC's ``StarCraft2Env`` as a single ``Env``."""

    def __init__(self, map_name: str, env_id: str, cfg: SMACConfig) -> None:
        self.map_name, self.cfg = map_name, cfg
        self._launch_seed: int | None = None
        self._sc2 = self._new_game(None)
        info = self._sc2.get_env_info()
        self.n_enemies = int(getattr(self._sc2, "n_enemies", 0))
        self.spec = EnvSpec(
            env_id=env_id,
            n_agents=int(info["n_agents"]),
            obs_dim=int(info["obs_shape"]),
            state_dim=int(info["state_shape"]),
            n_actions=int(info["n_actions"]),
            episode_limit=int(info["episode_limit"]),
            fully_observable=False,
            has_won=True,
        )
        self._t = 0
        self._done = True
        self._avail_NA: np.ndarray | None = None

    def _new_game(self, seed: int | None) -> Any:
        from smac.env import StarCraft2Env

        kwargs: dict[str, Any] = {"map_name": self.map_name, "difficulty": self.cfg.difficulty}
        if seed is not None:
            kwargs["seed"] = seed
        self._launch_seed = seed
        return StarCraft2Env(**kwargs)

    def _views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obs_NO = np.asarray(self._sc2.get_obs(), dtype=np.float32).reshape(self.spec.n_agents, self.spec.obs_dim)
        state_S = np.asarray(self._sc2.get_state(), dtype=np.float32).reshape(self.spec.state_dim)
        avail_NA = np.asarray(self._sc2.get_avail_actions(), dtype=bool).reshape(self.spec.n_agents, self.spec.n_actions)
        return obs_NO, state_S, avail_NA

    def reset(self, seed: int | None = None, *, index: int = 0) -> TimeStep:
        """Start an episode; a ``seed`` relaunches the game seeded for batched environment ``index``."""
        if seed is not None:
            self._sc2.close()  # SMAC launches StarCraft II on the first reset, so this costs a launch
            self._sc2 = self._new_game(env_seed(check_seed(seed), index) % 2**31)
        else:
            env_seed(0, index)  # validates index
        self._sc2.reset()
        self._t, self._done = 0, False
        obs_NO, state_S, avail_NA = self._views()
        self._avail_NA = avail_NA
        return TimeStep(obs_NO, state_S, avail_NA, info={"won": False, "score": 0.0})

    def step(self, actions: np.ndarray) -> TimeStep:
        if self._done or self._avail_NA is None:
            raise EpisodeOverError(
                f"{self.spec.env_id}: step() after the episode ended (or before reset()); call reset() first"
            )
        actions_N = validate_actions(actions, self._avail_NA, self.spec)
        reward, game_over, info = self._sc2.step([int(a) for a in actions_N])
        self._t += 1
        won = bool(info.get("battle_won", False))
        dead_enemies = int(info.get("dead_enemies", self.n_enemies if won else 0))
        dead_allies = int(info.get("dead_allies", 0))
        decided = won or dead_allies >= self.spec.n_agents or (self.n_enemies and dead_enemies >= self.n_enemies)
        at_limit = bool(info.get("episode_limit", False)) or self._t >= self.spec.episode_limit
        truncated = at_limit and not decided
        terminated = bool(game_over) and not truncated
        self._done = terminated or truncated
        obs_NO, state_S, avail_NA = self._views()
        self._avail_NA = avail_NA
        score = dead_enemies / self.n_enemies if self.n_enemies else float(won)
        return TimeStep(obs_NO, state_S, avail_NA, float(reward), terminated, truncated, {"won": won, "score": score})

    def render(self) -> np.ndarray:
        """Minimap ``[H, W, 3]`` uint8: allies blue, enemies red, brighter = more health, dead units grey."""
        sc2 = self._sc2
        map_x, map_y = int(getattr(sc2, "map_x", 32)), int(getattr(sc2, "map_y", 32))
        cell = max(1, 256 // max(map_x, map_y))
        img = np.full((map_y * cell, map_x * cell, 3), 24, dtype=np.uint8)
        for units, color in ((getattr(sc2, "agents", {}), (60, 120, 230)), (getattr(sc2, "enemies", {}), (220, 60, 60))):
            for unit in units.values():
                health_max = float(getattr(unit, "health_max", 0.0) or 1.0)
                frac = float(unit.health) / health_max
                c = np.array(color, float) * (0.35 + 0.65 * frac) if unit.health > 0 else np.array([110, 110, 110.0])
                x = int(np.clip(unit.pos.x, 0, map_x - 1) * cell)
                y = int(np.clip(map_y - 1 - unit.pos.y, 0, map_y - 1) * cell)  # SC2's y grows upward
                r = max(2, cell // 2 + 1)
                img[max(0, y - r):y + r, max(0, x - r):x + r] = c.astype(np.uint8)
        return img

    def close(self) -> None:
        self._done = True
        self._sc2.close()


def make(scenario: str | None, options: dict[str, str]) -> SMACEnv:
    map_name, env_id, cfg = _config(scenario, options)
    return SMACEnv(map_name, env_id, cfg)


def make_batched(scenario: str | None, options: dict[str, str], num_envs: int) -> BatchedEnv:
    map_name, env_id, cfg = _config(scenario, options)
    return LoopBatchedEnv(lambda: SMACEnv(map_name, env_id, cfg), num_envs)
