"""The GRF family on the real football engine: scoring, checkpoint rewards, batched workers, errors, minimap."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from marlctl.envs import grf, make_batched_env, make_env
from marlctl.envs.errors import EnvOptionError, EpisodeOverError, InvalidActionError, UnknownEnvError

pytest.importorskip("gfootball", reason="the GRF engine (gfootball) is not installed")

pytestmark = pytest.mark.grf  # needs the Google Research Football engine

SEED = 11
RIGHT, SHOT = grf.ACTION_NAMES.index("right"), grf.ACTION_NAMES.index("shot")


def _score_empty_goal(env) -> list:
    """Scripted attacker: three steps right, then shoot until the episode ends. Returns the steps."""
    steps = []
    for t in range(env.spec.episode_limit):
        steps.append(env.step([RIGHT] if t < 3 else [SHOT]))
        if steps[-1].done:
            break
    return steps


@pytest.fixture(scope="module")
def scoring_env():
    env = make_env("grf:academy_empty_goal_close")
    yield env
    env.close()


@pytest.fixture(scope="module")
def checkpoint_env():
    env = make_env("grf:academy_empty_goal_close,reward=scoring+checkpoints")
    yield env
    env.close()


def test_scripted_attacker_scores_and_wins(scoring_env) -> None:
    spec = scoring_env.spec
    assert (spec.n_agents, spec.obs_dim, spec.state_dim, spec.n_actions, spec.episode_limit) == (1, 115, 126, 19, 150)
    assert spec.has_won and spec.action_names[SHOT] == "shot"
    ts = scoring_env.reset(SEED)
    assert ts.avail.all() and ts.info == {"won": False, "score": 0.0}
    steps = _score_empty_goal(scoring_env)
    last = steps[-1]
    assert last.terminated and not last.truncated
    assert last.info == {"won": True, "score": 1.0}
    assert last.reward == 1.0 and all(s.reward == 0.0 for s in steps[:-1]), "scoring pays only the goal"
    assert len(steps) < 30
    with pytest.raises(EpisodeOverError, match="call reset"):
        scoring_env.step([SHOT])
    # Same seed, same actions: the same episode, observation for observation.
    scoring_env.reset(SEED)
    again = _score_empty_goal(scoring_env)
    assert len(again) == len(steps)
    for a, b in zip(steps, again, strict=True):
        np.testing.assert_array_equal(a.obs, b.obs)
        assert a.reward == b.reward


def test_idle_attacker_is_truncated_at_the_limit_without_a_win() -> None:
    env = make_env("grf:academy_empty_goal_close,limit=5")
    try:
        env.reset(SEED)
        steps = [env.step([0]) for _ in range(5)]
        assert [s.truncated for s in steps] == [False] * 4 + [True]
        assert not any(s.terminated for s in steps) and steps[-1].info == {"won": False, "score": 0.0}
    finally:
        env.close()


def test_checkpoint_reward_pays_before_the_goal(checkpoint_env) -> None:
    checkpoint_env.reset(SEED)
    steps = _score_empty_goal(checkpoint_env)
    rewards = np.array([s.reward for s in steps])
    assert steps[-1].info["won"]
    assert (rewards[:-1] > 0).any(), f"no intermediate checkpoint reward: {rewards}"
    # GRF: 10 checkpoints x 0.1 (unclaimed ones are paid with the goal) + 1 for the goal.
    assert rewards.sum() == pytest.approx(2.0, abs=1e-5)


def test_invalid_actions_name_the_agent(scoring_env) -> None:
    scoring_env.reset(SEED)
    with pytest.raises(InvalidActionError, match=r"agent 0 chose action 19, out of range.*0 \(idle\)"):
        scoring_env.step([19])
    with pytest.raises(InvalidActionError, match="shape"):
        scoring_env.step([1, 2])
    assert not scoring_env.step([RIGHT]).done  # the refused steps lost nothing


def test_render_draws_the_pitch_teams_and_ball(scoring_env) -> None:
    ts = scoring_env.reset(SEED)
    img = scoring_env.render()
    assert img.dtype == np.uint8 and img.shape == (132, 296, 3)
    for color in (grf.PITCH, grf.LINE, grf.LEFT, grf.RIGHT, grf.BALL, grf.RING):
        assert (img == color).all(axis=-1).any(), f"colour {color} missing from the minimap"
    # The ring marks the agent's active player (simple115v2: one-hot at [97:108], x of player p at [2p]).
    p = int(ts.obs[0, grf.ACTIVE].argmax())
    col = int(grf._px(ts.obs[0, 2 * p], 0.0)[0])
    ring_cols = np.flatnonzero((img == grf.RING).all(axis=-1).any(axis=0))
    assert ring_cols.min() <= col <= ring_cols.max()
    # Academy "empty goal": the opponents' only player stands in the far (left) goal, behind our keeper.
    blue_cols = np.flatnonzero((img == grf.RIGHT).all(axis=-1).any(axis=0))
    assert blue_cols.max() < img.shape[1] // 4
    scoring_env.step([RIGHT])
    assert not np.array_equal(scoring_env.render(), img), "the minimap follows the game"


def test_batched_workers_auto_reset_and_replay_single_envs() -> None:
    env_id = "grf:academy_3_vs_1_with_keeper,limit=6"
    batched = make_batched_env(env_id, 2)
    single = make_env(env_id)
    try:
        spec = batched.spec
        assert (spec.n_agents, spec.state_dim) == (3, 115 + 33)
        rng = np.random.default_rng(0)
        bs = batched.reset(SEED)
        history, actions = [bs], []
        for _ in range(14):
            actions.append(rng.integers(0, 19, size=(2, 3)))
            bs = batched.step(actions[-1])
            history.append(bs)
        assert bs.obs.shape == (2, 3, 115) and bs.state.shape == (2, 148)
        dones = np.array([h.done for h in history[1:]])  # [T, B]
        assert dones.sum(axis=0).min() >= 2, "both workers must have auto-reset at least twice"
        active = history[0].state[0, 115:].reshape(3, 11)
        assert (active.sum(axis=1) == 1).all() and len(set(active.argmax(axis=1))) == 3, "3 distinct players"
        # Batched env b is single env reset(SEED, index=b), across auto-resets.
        for b in range(2):
            ts = single.reset(SEED, index=b)
            np.testing.assert_array_equal(ts.obs, history[0].obs[b])
            for t, acts in enumerate(actions):
                ts = single.step(acts[b])
                h = history[t + 1]
                np.testing.assert_array_equal(ts.obs, h.final_obs[b])
                assert (np.float32(ts.reward), ts.done) == (h.reward[b], h.done[b])
                if ts.done:
                    ts = single.reset()
                np.testing.assert_array_equal(ts.state, h.state[b])
        # A bad action in environment 1 steps no engine.
        bad = rng.integers(0, 19, size=(2, 3))
        bad[1, 2] = 42
        with pytest.raises(InvalidActionError, match="environment 1, agent 2"):
            batched.step(bad)
        # A worker that dies is a clear error, not a hang.
        victim = batched.envs[1]._worker
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(timeout=30)
        survivor = batched.envs[0]._worker
        with pytest.raises(grf.EngineWorkerError, match=r"died \(exit code -9\) during step"):
            batched.step(rng.integers(0, 19, size=(2, 3)))
        assert survivor.proc.poll() is not None, "a broken batch stops its other workers too"
        with pytest.raises(EpisodeOverError, match="reset"):
            batched.step(rng.integers(0, 19, size=(2, 3)))
        bs = batched.reset(SEED)  # a reset starts fresh workers
        np.testing.assert_array_equal(bs.obs, history[0].obs)
        workers = [e._worker for e in batched.envs]
    finally:
        batched.close()
        single.close()
    assert all(w.proc.poll() is not None for w in workers), "close() must stop every worker"


@pytest.mark.parametrize(
    ("env_id", "error", "says"),
    [
        ("grf:academy_3_vs_2", UnknownEnvError, "valid: academy_empty_goal_close, academy_empty_goal,"),
        ("grf", UnknownEnvError, r"e\.g\. grf:academy_3_vs_1_with_keeper"),
        ("grf:academy_corner,reward=dense", EnvOptionError, "reward must be one of scoring, scoring\\+checkpoints"),
        ("grf:academy_corner,limit=0", EnvOptionError, "limit must be in 1..3000"),
        ("grf:academy_corner,limit=ten", EnvOptionError, "not a valid int"),
        ("grf:academy_corner,speed=2", EnvOptionError, "valid options: reward .*limit"),
    ],
)
def test_bad_ids_say_what_is_valid(env_id: str, error: type, says: str) -> None:
    with pytest.raises(error, match=says):
        make_env(env_id)
    with pytest.raises(error, match=says):
        make_batched_env(env_id, 2)


def test_workers_are_stopped_at_interpreter_exit() -> None:
    code = (
        "from marlctl.envs import make_batched_env\n"
        "env = make_batched_env('grf:academy_empty_goal_close', 2)\n"
        "env.reset(0)\n"
        "print(' '.join(str(e._worker.proc.pid) for e in env.envs), flush=True)\n"
    )  # exits without close()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 30
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if alive:
            time.sleep(0.1)
    assert not alive, f"GRF worker processes {alive} outlived their interpreter"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
