"""The SMAC adapter: its logic against a stand-in StarCraft2Env (no game binary can exist here), and the real
missing-backend error."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from marlctl.envs import list_families, make_batched_env, make_env
from marlctl.envs.errors import (
    BackendUnavailableError,
    EnvOptionError,
    EpisodeOverError,
    InvalidActionError,
    UnknownEnvError,
)
from marlctl.envs.vector import env_seed

SEED = 5
NOOP, STOP, NORTH, ATTACK = 0, 1, 2, 6  # SMAC's action layout: no-op, stop, 4 moves, then attack enemy j


class _Unit:
    def __init__(self, health: float, x: float, y: float) -> None:
        self.health, self.health_max = health, health
        self.pos = types.SimpleNamespace(x=x, y=y)


class FakeStarCraft2Env:
    """Stand-in with SMAC's StarCraft2Env API: 2 marines vs 1 enemy that hits agent 1 for 40 a step.

    Each attack (action 6) takes 40 of the enemy's 100 health; the episode limit is 5 steps, at
    which SMAC sets ``terminated`` without ``battle_won``. Rejects actions the avail mask forbids.
    """

    instances: list[FakeStarCraft2Env] = []

    def __init__(self, map_name: str = "8m", difficulty: str = "7", seed: int | None = None, **_: object) -> None:
        self.map_name, self.difficulty, self.seed = map_name, difficulty, seed
        self.n_agents, self.n_enemies, self.episode_limit = 2, 1, 5
        self.n_actions = 6 + self.n_enemies
        self.map_x = self.map_y = 32
        self.closed, self.resets = False, 0
        FakeStarCraft2Env.instances.append(self)

    def get_env_info(self) -> dict:
        return {"state_shape": 3, "obs_shape": 4, "n_actions": self.n_actions, "n_agents": self.n_agents,
                "episode_limit": self.episode_limit}

    def reset(self) -> tuple:
        self.resets += 1
        self.t = 0
        self.agents = {0: _Unit(45.0, 10.0, 16.0), 1: _Unit(45.0, 10.0, 20.0)}
        self.enemies = {0: _Unit(100.0, 22.0, 18.0)}
        return self.get_obs(), self.get_state()

    def get_obs(self) -> list:
        e = self.enemies[0].health / 100.0
        return [np.array([u.health / 45.0, u.pos.x / 32, u.pos.y / 32, e], np.float32) for u in self.agents.values()]

    def get_state(self) -> np.ndarray:
        return np.array([self.agents[0].health, self.agents[1].health, self.enemies[0].health], np.float32) / 100.0

    def get_avail_actions(self) -> list:
        out = []
        for u in self.agents.values():
            if u.health <= 0:
                out.append([1] + [0] * (self.n_actions - 1))
            else:
                out.append([0, 1, 1, 1, 1, 1, int(self.enemies[0].health > 0)])
        return out

    def step(self, actions: list) -> tuple:
        avail = self.get_avail_actions()
        assert all(avail[i][a] for i, a in enumerate(actions)), f"the adapter let through invalid actions {actions}"
        self.t += 1
        damage = 40.0 * sum(a == ATTACK for a in actions)
        enemy = self.enemies[0]
        dealt = min(damage, enemy.health)
        enemy.health -= dealt
        if enemy.health > 0:
            self.agents[1].health = max(0.0, self.agents[1].health - 40.0)
        for i, a in enumerate(actions):
            if a == NORTH:
                self.agents[i].pos.y += 1
        won = enemy.health <= 0
        info = {"battle_won": won, "dead_allies": sum(u.health <= 0 for u in self.agents.values()),
                "dead_enemies": int(won)}
        return dealt / 10.0 + (20.0 if won else 0.0), won or self.t >= self.episode_limit, info

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_smac(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[FakeStarCraft2Env]:
    """Make ``from smac.env import StarCraft2Env`` give the stand-in and SC2PATH point at a directory."""
    pkg, env_mod = types.ModuleType("smac"), types.ModuleType("smac.env")
    env_mod.StarCraft2Env = FakeStarCraft2Env
    pkg.env = env_mod
    monkeypatch.setitem(sys.modules, "smac", pkg)
    monkeypatch.setitem(sys.modules, "smac.env", env_mod)
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    FakeStarCraft2Env.instances = []
    return FakeStarCraft2Env


def test_smac_adapter_with_fake_starcraft2env_no_game_binary(fake_smac: type[FakeStarCraft2Env]) -> None:
    from marlctl.envs import smac

    assert smac.availability() == (True, "StarCraft II via SMAC")
    env = make_env("smac:3m")
    spec = env.spec
    assert (spec.env_id, spec.n_agents, spec.obs_dim, spec.state_dim, spec.n_actions, spec.episode_limit) == (
        "smac:3m", 2, 4, 3, 7, 5)
    assert spec.has_won

    # A seeded reset relaunches the game with batched env index's stream seed.
    ts = env.reset(SEED, index=1)
    game = fake_smac.instances[-1]
    assert (game.map_name, game.difficulty, game.seed) == ("3m", "7", env_seed(SEED, 1) % 2**31)
    assert ts.obs.shape == (2, 4) and ts.obs.dtype == np.float32 and ts.state.shape == (3,)
    np.testing.assert_array_equal(ts.avail, [[0, 1, 1, 1, 1, 1, 1]] * 2)
    with pytest.raises(InvalidActionError, match=r"agent 0 chose action 0, not available now; valid actions.*\[1, 2"):
        env.step([NOOP, STOP])
    with pytest.raises(InvalidActionError, match="agent 1 chose action 7, out of range"):
        env.step([STOP, 7])

    # Both attack: 80 damage, then the kill: a won battle, every enemy dead.
    ts = env.step([ATTACK, ATTACK])
    assert ts.reward == 8.0 and not ts.done and ts.info == {"won": False, "score": 0.0}
    ts = env.step([ATTACK, STOP])
    assert ts.terminated and not ts.truncated and ts.info == {"won": True, "score": 1.0} and ts.reward == 22.0
    with pytest.raises(EpisodeOverError):
        env.step([STOP, STOP])

    # No attack: agent 1 dies (may then only no-op) and SMAC's episode limit is reported as a truncation.
    ts = env.reset()
    assert fake_smac.instances[-1] is game and game.resets == 2, "reset() continues with the running game"
    for t in range(5):
        ts = env.step([NORTH, NORTH if t < 2 else NOOP])
        if t == 1:
            np.testing.assert_array_equal(ts.avail[1], [1, 0, 0, 0, 0, 0, 0])
    assert ts.truncated and not ts.terminated and ts.info == {"won": False, "score": 0.0}
    img = env.render()
    assert img.dtype == np.uint8 and img.shape == (256, 256, 3)
    assert (img[..., 2] > 150).any() and (img[..., 0] > 150).any(), "allies blue, enemy red"
    env.close()
    assert game.closed

    # Batched: one game per environment, seeded per index, auto-reset after the win.
    batched = make_batched_env("smac:3m,difficulty=A", 2)
    bs = batched.reset(SEED)
    games = fake_smac.instances[-2:]
    assert [g.seed for g in games] == [env_seed(SEED, b) % 2**31 for b in range(2)]
    assert {g.difficulty for g in games} == {"A"}
    batched.step(np.full((2, 2), ATTACK))
    out = batched.step(np.array([[ATTACK, STOP], [STOP, STOP]]))
    np.testing.assert_array_equal(out.won, [True, False])
    np.testing.assert_array_equal(out.obs[0], bs.obs[0])  # env 0 auto-reset to a fresh battle
    assert out.final_obs[0, 0, 3] == 0.0 and games[0].resets == 2
    batched.close()
    assert all(g.closed for g in games)


def test_smac_bad_ids_say_what_is_valid(fake_smac: type[FakeStarCraft2Env]) -> None:
    with pytest.raises(UnknownEnvError, match="unknown SMAC map '4m'; valid: 3m, 8m, 25m"):
        make_env("smac:4m")
    with pytest.raises(EnvOptionError, match="difficulty must be one of 1, 2, .*A, got '11'"):
        make_env("smac:3m,difficulty=11")
    with pytest.raises(EnvOptionError, match="valid options: difficulty"):
        make_batched_env("smac:3m,race=zerg", 2)


def test_smac_sc2path_must_be_a_directory(fake_smac: type[FakeStarCraft2Env], monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("SC2PATH", str(tmp_path / "no_game_here"))
    with pytest.raises(BackendUnavailableError, match="no_game_here' is not a directory.*smax:3m runs the same"):
        make_env("smac:3m")


@pytest.mark.skipif(importlib.util.find_spec("smac") is not None, reason="a 'smac' package is installed here")
def test_smac_missing_backend_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real error of this machine (no SMAC, no StarCraft II): what to install, and smax as the way out."""
    monkeypatch.delenv("SC2PATH", raising=False)
    for make in (lambda: make_env("smac:3m"), lambda: make_batched_env("smac:3m", 2)):
        with pytest.raises(BackendUnavailableError) as err:
            make()
        msg = str(err.value)
        for says in ("github.com/oxwhirl/smac", "not the PyPI package 'smac'", "SC2PATH", "StarCraft II",
                     "smax:3m runs the same scenario in JAX without the game"):
            assert says in msg, f"{says!r} missing from: {msg}"
    with pytest.raises(BackendUnavailableError, match="smax:<map> runs StarCraft scenarios in JAX"):
        make_env("smac:corridor")  # a map SMAX does not have
    assert "smac" not in sys.modules
    row = {fam.name: (ok, note) for fam, ok, note in list_families()}["smac"]
    assert row[0] is False
    # `envs list` names the git package and warns off the unrelated PyPI `smac`, not "needs package 'smac'".
    assert "github.com/oxwhirl/smac" in row[1] and "unrelated" in row[1] and "SC2PATH" in row[1]
