"""API conformance of every environment id the registry knows, single and batched, plus registry errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from marlctl.envs import (
    BatchedEnv,
    Env,
    EnvSpec,
    env_spec,
    list_families,
    make_batched_env,
    make_env,
    parse_env_id,
)
from marlctl.envs.errors import (
    BackendUnavailableError,
    EnvError,
    EnvOptionError,
    EpisodeOverError,
    InvalidActionError,
    PayoffFileError,
    UnknownEnvError,
)
from marlctl.envs.vector import random_actions

SEED = 7
BATCH = 3
MAX_STEPS = 300  # bound on one rollout (every game's episode limit is below it)

# Extra ids beyond one per scenario / bare family: the papers' settings and short episodes that auto-reset.
EXTRA_IDS = (
    "matrix:tad10,task=6",
    "predator_prey:agents=2,prey=1,grid=5,punishment=0.5,reward=1,limit=20",
    "predator_prey:agents=4,prey=2,grid=7,view=3,limit=15",
    "predator_prey:agents=4,prey=1,grid=3,limit=30",  # random captures end episodes at different steps
    "gaussian_squeeze:domains=2",
    "hallway:agents=3,length=6,limit=12",
    # A turn-based game with action masks (the player not on turn may only send the unused action 0).
    "pettingzoo:pettingzoo.classic.tictactoe_v3,turn_based=true,limit=9,screen_height=64",
)


def _all_ids() -> list:
    """Every family's ids: each scenario of NumPy families; the first scenario of simulator families
    (one JIT / engine start each costs a minute on the 2-core CI box), with a skip reason when absent."""
    params = []
    for fam, installed, note in list_families():
        scenarios = fam.scenarios if fam.backend_module is None else fam.scenarios[:1]
        ids = [f"{fam.name}:{s}" for s in scenarios] or [fam.name]
        ids += [i for i in EXTRA_IDS if i.split(":")[0] == fam.name]
        marks = [] if installed else [pytest.mark.skip(reason=f"{fam.name}: {note}")]
        params += [pytest.param(i, marks=marks, id=i) for i in ids]
    return params


ALL_IDS = _all_ids()


@pytest.fixture(scope="module")
def envs_of() -> dict[str, tuple[Env, BatchedEnv]]:
    """One single and one batched env per id, reused across the checks (simulators compile once)."""
    cache: dict[str, tuple[Env, BatchedEnv]] = {}
    yield cache
    for single, batched in cache.values():
        single.close()
        batched.close()


def _get(envs_of: dict, env_id: str) -> tuple[Env, BatchedEnv]:
    if env_id not in envs_of:
        envs_of[env_id] = (make_env(env_id), make_batched_env(env_id, BATCH))
    return envs_of[env_id]


def _check_views(spec: EnvSpec, obs: np.ndarray, state: np.ndarray, avail: np.ndarray, lead: tuple = ()) -> None:
    assert obs.shape == (*lead, spec.n_agents, spec.obs_dim) and obs.dtype == np.float32
    assert state.shape == (*lead, spec.state_dim) and state.dtype == np.float32
    assert avail.shape == (*lead, spec.n_agents, spec.n_actions) and avail.dtype == np.bool_
    assert np.all(np.isfinite(obs)) and np.all(np.isfinite(state))
    assert avail.any(axis=-1).all(), "every agent needs at least one available action"


def _rollout(env: Env, seed: int, action_seed: int) -> list[tuple]:
    """One episode with random available actions; checks every step's views; returns the trajectory."""
    rng = np.random.default_rng(action_seed)
    ts = env.reset(seed)
    _check_views(env.spec, ts.obs, ts.state, ts.avail)
    traj = [(ts.obs.copy(), ts.state.copy(), ts.avail.copy())]
    for t in range(1, MAX_STEPS + 1):
        actions = random_actions(ts.avail, rng)
        ts = env.step(actions)
        _check_views(env.spec, ts.obs, ts.state, ts.avail)
        assert isinstance(ts.reward, float) and np.isfinite(ts.reward)
        assert {"won", "score"} <= set(ts.info) and isinstance(ts.info["won"], bool)
        assert not (ts.terminated and ts.truncated)
        assert ts.truncated == (not ts.terminated and t == env.spec.episode_limit)
        traj.append((actions, ts.obs.copy(), ts.state.copy(), ts.avail.copy(), ts.reward, ts.terminated, ts.info))
        if ts.done:
            return traj
    raise AssertionError(f"episode did not end within {MAX_STEPS} steps (limit {env.spec.episode_limit})")


def _same(a: list[tuple], b: list[tuple]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            if isinstance(u, np.ndarray):
                if not np.array_equal(u, v):
                    return False
            elif u != v:
                return False
    return True


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_spec_is_consistent(envs_of: dict, env_id: str) -> None:
    single, batched = _get(envs_of, env_id)
    spec = single.spec
    assert spec == batched.spec == env_spec(env_id)
    assert batched.num_envs == BATCH
    assert min(spec.n_agents, spec.obs_dim, spec.state_dim, spec.n_actions, spec.episode_limit) >= 1
    assert spec.action_names == () or len(spec.action_names) == spec.n_actions
    assert parse_env_id(spec.env_id)[0] == parse_env_id(env_id)[0]
    assert make_env(spec.env_id).spec == spec, "the spec's env_id must rebuild the same environment"
    assert spec.to_dict()["env_id"] == spec.env_id


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_episode_views_and_determinism(envs_of: dict, env_id: str) -> None:
    single, _ = _get(envs_of, env_id)
    first = _rollout(single, SEED, action_seed=1)
    with pytest.raises(EpisodeOverError):
        single.step(random_actions(first[-1][3], np.random.default_rng(0)))
    assert _same(first, _rollout(single, SEED, action_seed=1)), "same seed and actions must replay the episode"
    img = single.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 8


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_batched_agrees_with_single_step_for_step(envs_of: dict, env_id: str) -> None:
    """Batched env b after reset(seed) = single env reset(seed, index=b), across auto-resets."""
    single, batched = _get(envs_of, env_id)
    spec = single.spec
    steps = min(2 * spec.episode_limit + 2, 40)
    rng = np.random.default_rng(3)
    bs = batched.reset(SEED)
    _check_views(spec, bs.obs, bs.state, bs.avail, (BATCH,))
    history = [bs]
    actions = []
    for _ in range(steps):
        actions.append(random_actions(bs.avail, rng))
        bs = batched.step(actions[-1])
        _check_views(spec, bs.obs, bs.state, bs.avail, (BATCH,))
        _check_views(spec, bs.final_obs, bs.final_state, bs.final_avail, (BATCH,))
        assert bs.reward.shape == bs.score.shape == bs.won.shape == (BATCH,) and bs.reward.dtype == np.float32
        assert not np.any(bs.terminated & bs.truncated)
        history.append(bs)
    resets = 0
    for b in range(BATCH):
        ts = single.reset(SEED, index=b)
        np.testing.assert_array_equal(ts.obs, history[0].obs[b])
        np.testing.assert_array_equal(ts.state, history[0].state[b])
        for t in range(steps):
            ts = single.step(actions[t][b])
            h = history[t + 1]
            np.testing.assert_array_equal(ts.obs, h.final_obs[b], err_msg=f"env {b} step {t}")
            np.testing.assert_array_equal(ts.state, h.final_state[b])
            np.testing.assert_array_equal(ts.avail, h.final_avail[b])
            assert np.float32(ts.reward) == h.reward[b]
            assert (ts.terminated, ts.truncated, ts.info["won"]) == (h.terminated[b], h.truncated[b], h.won[b])
            assert np.float32(ts.info["score"]) == h.score[b]
            if ts.done:
                resets += 1
                ts = single.reset()
            else:
                np.testing.assert_array_equal(h.obs[b], h.final_obs[b])
            np.testing.assert_array_equal(ts.obs, h.obs[b])
            np.testing.assert_array_equal(ts.avail, h.avail[b])
    if steps > spec.episode_limit:
        assert resets >= BATCH, "every env must have auto-reset at least once"


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_invalid_actions_are_refused_and_lose_nothing(envs_of: dict, env_id: str) -> None:
    single, batched = _get(envs_of, env_id)
    spec = single.spec
    ts = single.reset(SEED)
    good = random_actions(ts.avail, np.random.default_rng(0))
    for agent in range(spec.n_agents):
        blocked = np.flatnonzero(~ts.avail[agent])
        for bad_action in [spec.n_actions, -1, *blocked[:1]]:
            bad = good.copy()
            bad[agent] = bad_action
            with pytest.raises(InvalidActionError, match=f"agent {agent}"):
                single.step(bad)
    with pytest.raises(InvalidActionError, match="shape"):
        single.step(good[:-1])
    after = single.step(good)  # the refused steps changed nothing
    again = single.reset(SEED)
    np.testing.assert_array_equal(again.obs, ts.obs)
    assert np.float32(after.reward) == np.float32(single.step(good).reward)

    bs = batched.reset(SEED)
    acts = random_actions(bs.avail, np.random.default_rng(0))
    bad = acts.copy()
    bad[BATCH - 1, 0] = spec.n_actions
    with pytest.raises(InvalidActionError, match=f"environment {BATCH - 1}, agent 0"):
        batched.step(bad)
    with pytest.raises(InvalidActionError):
        batched.step(acts[0])
    ref = batched.reset(SEED)
    np.testing.assert_array_equal(ref.obs, bs.obs)
    batched.step(acts)


# -- registry and id errors ------------------------------------------------------------------


def test_parse_env_id() -> None:
    assert parse_env_id("smax:3m") == ("smax", "3m", {})
    assert parse_env_id("hallway") == ("hallway", None, {})
    assert parse_env_id(" predator_prey:agents=2, prey=1 ") == ("predator_prey", None, {"agents": "2", "prey": "1"})
    assert parse_env_id("grf:academy_3_vs_1_with_keeper,reward=scoring+checkpoints") == (
        "grf",
        "academy_3_vs_1_with_keeper",
        {"reward": "scoring+checkpoints"},
    )
    assert parse_env_id("matrix:file=/tmp/a=b.npy") == ("matrix", None, {"file": "/tmp/a=b.npy"})


@pytest.mark.parametrize(
    ("env_id", "error", "says"),
    [
        ("", UnknownEnvError, "valid families: smax"),
        ("starcraft:3m", UnknownEnvError, "valid families: smax, smac, grf, matrix"),
        ("matrix:qtranx", UnknownEnvError, "valid: qtran, qtran21, tad, tad10"),
        ("matrix", UnknownEnvError, "matrix:file=PATH"),
        ("matrix:qtran,seed=3", EnvOptionError, "valid options: file"),
        ("matrix:qtran,task=2", EnvOptionError, "only to stacked games"),
        ("matrix:tad10,task=11", EnvOptionError, "1..10"),
        ("hallway:3m", UnknownEnvError, "takes no scenario"),
        ("hallway:length=x", EnvOptionError, "length='x'.*not a valid int"),
        ("hallway:length=2", EnvOptionError, "length must be >= 4"),
        ("predator_prey:view=4", EnvOptionError, "view must be an odd number"),
        ("predator_prey:agents=20,prey=10,grid=5", EnvOptionError, "must fit on the 5x5 grid"),
        ("predator_prey:punishment=-1", EnvOptionError, "punishment must be a finite number >= 0"),
        ("predator_prey:agents=2,agents=3", EnvOptionError, "given twice"),
        ("predator_prey:agents=2,,prey=1", EnvOptionError, "stray comma"),
        ("predator_prey:agents=2,fast", EnvOptionError, "not key=value"),
        ("predator_prey:agents=", EnvOptionError, "needs a key and a value"),
        ("gaussian_squeeze:domains=3", EnvOptionError, r"domains must be one of \[1, 2\]"),
    ],
)
def test_bad_ids_name_what_is_valid(env_id: str, error: type, says: str) -> None:
    with pytest.raises(error, match=says):
        make_env(env_id)
    with pytest.raises(error, match=says):
        make_batched_env(env_id, 2)


def test_bad_num_envs_and_seeds() -> None:
    for n in (0, -1, 2.0, True):
        with pytest.raises(EnvError, match="num_envs"):
            make_batched_env("matrix:qtran", n)  # type: ignore[arg-type]
    env = make_env("matrix:qtran")
    for seed in (-1, 1.5, "3", 2**63):
        with pytest.raises(EnvError, match="seed"):
            env.reset(seed)  # type: ignore[arg-type]
    with pytest.raises(EpisodeOverError, match="reset"):
        env.step([0, 0])
    with pytest.raises(EnvError, match="index"):
        env.reset(1, index=-1)


def test_missing_family_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from marlctl.envs import registry

    monkeypatch.setitem(registry.FAMILY_MODULES, "smac", "marlctl.envs.no_such_module")
    with pytest.raises(BackendUnavailableError, match="marlctl.envs.no_such_module"):
        make_env("smac:3m")
    row = {fam.name: (ok, note) for fam, ok, note in list_families()}["smac"]
    assert row[0] is False and "not in this install" in row[1]


@pytest.mark.parametrize(
    ("content", "suffix", "says"),
    [
        ("[[1, 2], [3]]", ".json", "ragged|numbers"),
        ('[["a", "b"], ["c", "d"]]', ".json", "must be numbers"),
        ("[1, 2, 3]", ".json", "at least 2 agents"),
        ("[[1, 2, 3]]", ".json", "at least 2 actions"),
        ("[[1, NaN], [0, 1]]", ".json", "finite"),
        ('{"pay": [[1, 0], [0, 1]]}', ".json", "needs a 'payoff' key"),
        ('{"payoff": [[1, 0], [0, 1]], "action_names": ["a"]}', ".json", "1 action_names for 2 actions"),
        ("{not json", ".json", "cannot be read"),
        ("[[1, 0], [0, 1]]", ".txt", "must end in .npy or .json"),
        ("garbage", ".npy", "cannot be read"),
    ],
)
def test_malformed_payoff_files(tmp_path: Path, content: str, suffix: str, says: str) -> None:
    path = tmp_path / f"game{suffix}"
    path.write_text(content)
    with pytest.raises(PayoffFileError, match=says):
        make_env(f"matrix:file={path}")
    with pytest.raises(PayoffFileError, match="does not exist"):
        make_env(f"matrix:file={tmp_path / 'missing.npy'}")


def test_payoff_file_games(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3-agent .npy tensor with unequal axes, and a .json with action names, behave as games."""
    rng = np.random.default_rng(0)
    payoff = rng.normal(size=(2, 3, 4))
    np.save(tmp_path / "three.npy", payoff)
    env = make_env(f"matrix:file={tmp_path / 'three.npy'}")
    assert (env.spec.n_agents, env.spec.n_actions, env.spec.episode_limit) == (3, 4, 1)
    ts = env.reset(0)
    np.testing.assert_array_equal(ts.avail, [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    best = np.unravel_index(np.argmax(payoff), payoff.shape)
    ts = env.step(np.array(best))
    assert ts.reward == pytest.approx(payoff.max()) and ts.info["won"] and ts.terminated
    with pytest.raises(InvalidActionError, match=r"agent 0 chose action 2, not available now; valid actions.*\[0, 1\]"):
        env.reset()
        env.step([2, 0, 0])

    (tmp_path / "named.json").write_text(json.dumps({"payoff": [[3, 0], [0, 1]], "action_names": ["hunt", "hare"]}))
    monkeypatch.chdir(tmp_path)
    env = make_env("matrix:file=named.json")
    assert env.spec.env_id == f"matrix:file={(tmp_path / 'named.json').resolve()}"
    assert env.spec.action_names == ("hunt", "hare")
    env.reset(0)
    assert env.step([1, 1]).reward == 1.0


def test_matrix_and_list_import_no_heavy_backend() -> None:
    """Games, `envs list` and `envs check` of a game must not import torch, JAX, the football engine or StarCraft."""
    code = (
        "import sys\n"
        "from marlctl.envs import make_batched_env, make_env, list_families\n"
        "make_env('matrix:qtran').reset(0); make_batched_env('predator_prey', 2).reset(0)\n"
        "list_families()\n"
        "from marlctl.cli.envs_cmd import CheckConfig, run_check\n"
        "run_check(CheckConfig('hallway', episodes=2, batch=2, batch_steps=3))\n"
        "heavy = [m for m in ('torch', 'jax', 'jaxmarl', 'gfootball', 'smac', 'pysc2') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("env_id", ["hallway:limit=6", "predator_prey:agents=2,prey=1,grid=4,limit=8"])
def test_loop_batched_env_matches_the_vectorized_batch(env_id: str) -> None:
    """The generic loop-over-singles batch (used for GRF/SMAC) = the NumPy batch, auto-resets included."""
    from marlctl.envs.vector import LoopBatchedEnv

    loop = LoopBatchedEnv(lambda: make_env(env_id), 4)
    vec = make_batched_env(env_id, 4)
    a, b = loop.reset(SEED), vec.reset(SEED)
    rng = np.random.default_rng(0)
    done = 0
    for _ in range(20):
        for field in ("obs", "state", "avail", "final_obs", "final_state", "final_avail"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        for field in ("reward", "terminated", "truncated", "won", "score"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        actions = random_actions(a.avail, rng)
        a, b = loop.step(actions), vec.step(actions)
        done += int(a.done.sum())
    assert done >= 4
    bad = random_actions(a.avail, rng)
    bad[2, 1] = -1
    with pytest.raises(InvalidActionError, match="environment 2, agent 1"):
        loop.step(bad)
    before = [env.game.observe()[1] for env in loop.envs]  # each env's state [1, S]
    with pytest.raises(InvalidActionError):
        loop.step(bad)
    after = [env.game.observe()[1] for env in loop.envs]
    assert all(np.array_equal(x, y) for x, y in zip(before, after, strict=True)), "a refused batch steps no env"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "marlctl.cli.app", *args], capture_output=True, text=True, timeout=180,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_cli_envs_list_and_check() -> None:
    out = _cli("envs", "list")
    assert out.returncode == 0, out.stderr
    for name in ("matrix:SCENARIO", "hallway", "predator_prey", "gaussian_squeeze", "qtran, qtran21, tad, tad10"):
        assert name in out.stdout
    out = _cli("envs", "check", "hallway", "--episodes", "3", "--batch", "4", "--batch-steps", "10")
    assert out.returncode == 0, out.stderr
    assert "n_agents" in out.stdout and "random policy over 3 episodes" in out.stdout
    assert "same seed + actions -> same episode: yes" in out.stdout
    assert "batched (4 envs, 10 steps)" in out.stdout and "env-steps/s" in out.stdout
    out = _cli("envs", "check", "hallway:speed=3")
    assert out.returncode == 2 and "unknown option 'speed'" in out.stderr and "valid options" in out.stderr
