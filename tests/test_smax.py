"""Tests of the SMAX family: real jaxmarl SMAX maps, single and batched, seeds, won, errors, render."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from marlctl.envs import smax
from marlctl.envs.base import BatchedEnv, Env
from marlctl.envs.errors import EnvOptionError, EpisodeOverError, InvalidActionError, UnknownEnvError
from marlctl.envs.vector import random_actions

pytest.importorskip("jaxmarl")


@pytest.fixture(scope="module")
def core3m() -> smax.SmaxCore:
    return smax.SmaxCore(smax.parse_config("3m", {}))


def focus_fire(avail_NA: np.ndarray) -> np.ndarray:
    """Every agent shoots the lowest-index enemy in range, else moves east (towards the enemy)."""
    attack_NE = avail_NA[:, 5:]
    first = np.argmax(attack_NE, axis=-1) + 5
    return np.where(attack_NE.any(-1), first, np.where(avail_NA[:, 1], 1, 4))


def test_maps_are_exactly_jaxmarls() -> None:
    from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO

    assert set(smax.MAPS) == set(MAP_NAME_TO_SCENARIO)
    assert smax.FAMILY.scenarios == smax.MAPS


@pytest.mark.parametrize("map_name", smax.MAPS)
def test_every_smax_map_resets_and_steps_batched(map_name: str) -> None:
    env = smax.make_batched(map_name, {}, 2)
    assert isinstance(env, BatchedEnv)
    spec = env.spec
    b = env.reset(seed=1)
    assert b.obs.shape == (2, spec.n_agents, spec.obs_dim) and b.obs.dtype == np.float32
    assert b.state.shape == (2, spec.state_dim) and b.state.dtype == np.float32
    assert b.avail.shape == (2, spec.n_agents, spec.n_actions) and b.avail.dtype == np.bool_
    assert b.avail[..., 4].all(), "stop is always available"
    assert spec.n_actions == 5 + env.core.n_enemies and len(spec.action_names) == spec.n_actions
    rng = np.random.default_rng(0)
    for _ in range(2):
        b = env.step(random_actions(b.avail, rng))
        assert np.isfinite(b.obs).all() and np.isfinite(b.state).all() and np.isfinite(b.reward).all()
        assert b.reward.shape == b.won.shape == b.terminated.shape == (2,)
    assert not np.array_equal(b.obs[0], b.obs[1]), "envs (seed, 0) and (seed, 1) must differ"


def test_same_seed_same_episode_and_other_seed_differs(core3m: smax.SmaxCore) -> None:
    env = smax.SmaxEnv(core3m.config, core3m)
    assert isinstance(env, Env)

    def episode(seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(5)
        ts = env.reset(seed)
        frames = [np.concatenate([ts.obs.ravel(), ts.state])]
        while not ts.done:
            ts = env.step(random_actions(ts.avail, rng))
            frames.append(np.concatenate([ts.obs.ravel(), ts.state, [ts.reward]]))
        return frames

    first, second, other = episode(3), episode(3), episode(4)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_batched_env_b_replays_single_env_stream_across_auto_reset(core3m: smax.SmaxCore) -> None:
    num_envs, steps = 3, 40
    batched = smax.SmaxBatchedEnv(core3m.config, num_envs, core3m)
    singles = [smax.SmaxEnv(core3m.config, core3m) for _ in range(num_envs)]
    bs = batched.reset(seed=11)
    ts = [s.reset(11, index=b) for b, s in enumerate(singles)]
    for b in range(num_envs):
        np.testing.assert_array_equal(bs.obs[b], ts[b].obs)
    rng = np.random.default_rng(2)
    resets = 0
    for _ in range(steps):
        acts = random_actions(bs.avail, rng)
        bs = batched.step(acts)
        for b, s in enumerate(singles):
            t = s.step(acts[b])
            np.testing.assert_array_equal(bs.final_obs[b], t.obs)
            np.testing.assert_array_equal(bs.final_state[b], t.state)
            assert bs.reward[b] == np.float32(t.reward)
            assert (bs.terminated[b], bs.truncated[b], bs.won[b]) == (t.terminated, t.truncated, t.info["won"])
            if t.done:
                t = s.reset(None)  # the next episode of the same stream, as the batched auto-reset
                resets += 1
            np.testing.assert_array_equal(bs.obs[b], t.obs)
            np.testing.assert_array_equal(bs.avail[b], t.avail)
    assert resets >= 2, "random 3m episodes end within 40 steps, so auto-reset was exercised"


def test_scripted_focus_fire_wins_3m_and_standing_still_loses(core3m: smax.SmaxCore) -> None:
    env = smax.SmaxEnv(core3m.config, core3m)
    ts = env.reset(0)
    total = 0.0
    while not ts.done:
        ts = env.step(focus_fire(ts.avail))
        total += ts.reward
    assert ts.terminated and not ts.truncated
    assert ts.info == {"won": True, "score": 1.0}
    assert total > 1.0, "won battle bonus (1) plus damage dealt"

    ts = env.reset(0)
    stop = np.full(env.spec.n_agents, 4)
    while not ts.done:
        ts = env.step(stop)
    assert ts.terminated and not ts.info["won"] and ts.info["score"] == 0.0
    assert not ts.avail[:, :4].any() and ts.avail[:, 4].all(), "dead units may only stop"


def test_episode_limit_option_truncates() -> None:
    env = smax.make("3m", {"limit": "3"})
    assert env.spec.episode_limit == 3 and env.spec.env_id == "smax:3m,limit=3"
    ts = env.reset(0)
    stop = np.full(env.spec.n_agents, 4)
    for _ in range(3):
        assert not ts.done
        ts = env.step(stop)
    assert ts.truncated and not ts.terminated and not ts.info["won"]
    with pytest.raises(EpisodeOverError, match="call reset"):
        env.step(stop)


def test_invalid_actions_are_refused_with_what_is_valid(core3m: smax.SmaxCore) -> None:
    env = smax.SmaxEnv(core3m.config, core3m)
    with pytest.raises(EpisodeOverError, match="before reset"):
        env.step(np.zeros(3, int))
    ts = env.reset(0)
    assert not ts.avail[0, 5:].any(), "enemies start out of range"
    with pytest.raises(InvalidActionError, match=r"agent 0 chose action 5, not available now; valid actions for this "
                       r"agent now: \[0 \(move_north\), 1 \(move_east\), 2 \(move_south\), 3 \(move_west\), 4 \(stop\)\]"):
        env.step(np.array([5, 4, 4]))
    with pytest.raises(InvalidActionError, match="agent 0 chose action 8, out of range"):
        env.step(np.array([8, 4, 4]))
    with pytest.raises(InvalidActionError, match="shape"):
        env.step(np.array([4, 4]))
    with pytest.raises(InvalidActionError, match="integers"):
        env.step(np.array([4.5, 4, 4]))
    env.step(np.array([4.0, 1, 4]))  # whole floats are accepted
    batched = smax.SmaxBatchedEnv(core3m.config, 2, core3m)
    b = batched.reset(0)
    bad = np.full((2, 3), 4)
    bad[1, 2] = 6
    with pytest.raises(InvalidActionError, match=r"environment 1, agent 2 chose action 6"):
        batched.step(bad)
    assert b.obs.shape == (2, 3, 75)


def test_bad_ids_name_the_valid_choices() -> None:
    with pytest.raises(UnknownEnvError, match="valid maps: 3m, 2s3z"):
        smax.make("4m", {})
    with pytest.raises(UnknownEnvError, match="needs a map"):
        smax.make(None, {})
    with pytest.raises(EnvOptionError, match=r"valid options: \['enemy', 'limit', 'smac'\]"):
        smax.make("3m", {"foo": "1"})
    with pytest.raises(EnvOptionError, match="limit"):
        smax.make("3m", {"limit": "0"})
    with pytest.raises(EnvOptionError, match="closest, random"):
        smax.make("3m", {"enemy": "weakest"})
    with pytest.raises(EnvOptionError, match="num_envs"):
        smax.make_batched("3m", {}, 0)
    with pytest.raises(EnvOptionError, match=r"smac='yes'; valid values: 1 .* or 0"):
        smax.make("3m", {"smac": "yes"})


def test_render_draws_both_teams(core3m: smax.SmaxCore) -> None:
    env = smax.SmaxEnv(core3m.config, core3m)
    env.reset(0)
    img = env.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    blue = (img[..., 2] > 200) & (img[..., 0] < 80)
    red = (img[..., 0] > 200) & (img[..., 2] < 80)
    assert blue.sum() > 100 and red.sum() > 100
    assert np.asarray(blue.nonzero()[1]).mean() < np.asarray(red.nonzero()[1]).mean(), "allies start west"


def test_trainer_takes_smax_views_through_dlpack_without_a_copy(core3m: smax.SmaxCore) -> None:
    """The arrays the networks read are JAX's own buffers (on a GPU the same path skips the host); a NumPy
    env's arrays, which it may reuse, are copied. The rollout worker goes through the same hand-off."""
    import dataclasses

    torch = pytest.importorskip("torch")
    from marlctl.agents.recurrent import AgentNet, AgentNetConfig
    from marlctl.trainer.rollout import RolloutWorker
    from marlctl.trainer.step_tensors import TRANSFERS, step_tensor

    cpu = torch.device("cpu")
    batched = smax.SmaxBatchedEnv(core3m.config, 2, core3m)
    b = batched.reset(0)
    assert all(isinstance(x, np.ndarray) for x in (b.obs, b.state, b.avail, b.reward, b.final_obs))
    before = dict(TRANSFERS)
    for name, dtype in (("obs", torch.float32), ("state", torch.float32), ("avail", torch.bool)):
        t = step_tensor(b, name, cpu, dtype)
        assert t.dtype == dtype and t.data_ptr() == b.device_views[name].unsafe_buffer_pointer()
        np.testing.assert_array_equal(t.numpy(), getattr(b, name))
    assert TRANSFERS["dlpack"] == before.get("dlpack", 0) + 3 and TRANSFERS["copy"] == before.get("copy", 0)
    copied = step_tensor(dataclasses.replace(b, device_views=None), "obs", cpu)
    assert copied.data_ptr() != b.obs.ctypes.data and TRANSFERS["copy"] == before.get("copy", 0) + 1
    spec = batched.spec
    net = AgentNet(AgentNetConfig(obs_dim=spec.obs_dim, n_actions=spec.n_actions, n_agents=spec.n_agents,
                                  hidden_dim=8))
    worker = RolloutWorker(batched, net, cpu)
    mark = TRANSFERS["dlpack"]
    worker.run_steps(5, 0.5, np.random.default_rng(0), None, reset_seed=1)
    assert TRANSFERS["dlpack"] == mark + 5  # one obs hand-off per step, none copied


def test_quiet_import_keeps_stdout_and_prints_nothing() -> None:
    code = (
        "import io, sys\n"
        "mine = io.StringIO(); sys.stdout = mine\n"
        "from marlctl.envs import smax\n"
        "smax._import_jax()\n"
        "assert sys.stdout is mine, 'sys.stdout was replaced'\n"
        "sys.__stdout__.write('captured=' + repr(mine.getvalue()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "captured=''"


def test_envs_of_one_map_share_their_compiled_core() -> None:
    """A second env of the same configuration (eval env, runner slot, replay) must not compile again."""
    from marlctl.envs import make_batched_env, make_env

    a, b = make_env("smax:3m"), make_env("smax:3m")
    assert a.core is b.core is make_batched_env("smax:3m", 2).core
    assert make_env("smax:3m,limit=50").core is not a.core  # another configuration, another program


# ---- smac=1: SMAC's per-map episode limits and SMAC's reward scaled to a max of 20 ----


def test_smac_option_sets_smacs_limit_per_map_and_the_id() -> None:
    assert set(smax.SMAC_LIMITS) == set(smax.MAPS)
    issue = {"3m": 60, "8m": 120, "2s3z": 120, "3s5z": 150, "5m_vs_6m": 70, "10m_vs_11m": 150, "27m_vs_30m": 180,
             "3s5z_vs_3s6z": 170, "3s_vs_5z": 250, "6h_vs_8z": 150, "25m": 150}
    for map_name in smax.MAPS:
        cfg = smax.parse_config(map_name, {"smac": "1"})
        assert cfg.episode_limit == smax.SMAC_LIMITS[map_name] and cfg.smac_reward
        assert cfg.env_id == f"smax:{map_name},smac=1"
        assert cfg.episode_limit == issue.get(map_name, 400)
    assert smax.parse_config("3m", {"smac": "0"}) == smax.parse_config("3m", {})
    mixed = smax.parse_config("3m", {"smac": "1", "limit": "80"})  # an explicit limit wins
    assert mixed.episode_limit == 80 and mixed.env_id == "smax:3m,smac=1,limit=80"


@pytest.mark.parametrize("env_id", ["matrix:qtran,smac=1", "hallway:smac=1", "predator_prey:smac=1",
                                    "predator_prey_qtran:smac=1", "gaussian_squeeze:smac=1", "smac:3m,smac=1",
                                    "grf:academy_empty_goal_close,smac=1"])
def test_smac_option_on_another_family_is_an_error(env_id: str) -> None:
    """Options are per family: only smax knows ``smac``; elsewhere it is an unknown option naming the valid ones."""
    from marlctl.envs import make_env

    with pytest.raises(EnvOptionError, match=r"unknown option 'smac' for '\w+'; valid options: "):
        make_env(env_id)


def _hide_in_the_north_west(env: smax.SmaxEnv, ts) -> np.ndarray:
    """Allies walk to the north-west corner, out of the heuristic enemy's sight (it heads for our half's middle)."""
    n = env.spec.n_agents
    pos = np.asarray(env._carry[0].state.unit_positions)[:n]
    a = np.where(pos[:, 1] < 28, 0, np.where(pos[:, 0] > 3, 3, 4))  # north, then west, then stop
    return np.where(ts.avail[np.arange(n), a], a, 4)


def test_smac_3m_runs_to_smacs_limit_and_a_won_episode_pays_20() -> None:
    env = smax.make("3m", {"smac": "1"})
    assert env.spec.episode_limit == 60 and env.spec.env_id == "smax:3m,smac=1"
    ts, steps = env.reset(3), 0
    while not ts.done:
        ts = env.step(_hide_in_the_north_west(env, ts))
        steps += 1
    assert steps == 60 and ts.truncated and not ts.terminated  # jaxmarl's own limit would be 100

    # SMAC: damage + 10 per kill + 200 for the win, times 20 / max_reward; 3m: max_reward = 3*10 + 200 + 3*45.
    max_reward = 3 * 10 + 200 + 3 * 45
    for seed in range(4):
        ts, rewards = env.reset(seed), []
        while not ts.done:
            ts = env.step(focus_fire(ts.avail))
            rewards.append(ts.reward)
        assert min(rewards) >= 0.0
        if ts.info["won"]:
            assert sum(rewards) == pytest.approx(20.0, abs=1e-4)
            assert rewards[-1] >= 20 * 200 / max_reward  # the win bonus arrives with the last kill
        else:  # no win bonus: at most the damage and kill share of the 20
            assert sum(rewards) <= 20 * (1 - 200 / max_reward) + 1e-4
    jaxmarl = smax.SmaxEnv(smax.parse_config("3m", {}))  # the same battle under jaxmarl's reward sums to 2
    ts, total = jaxmarl.reset(0), 0.0
    while not ts.done:
        ts = jaxmarl.step(focus_fire(ts.avail))
        total += ts.reward
    assert ts.info["won"] and total == pytest.approx(2.0, abs=1e-4)
