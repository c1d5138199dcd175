"""PettingZoo ids: the adapter's mapping (padding, per-agent action spaces, masks, limit, team reward, success) on a
small ParallelEnv written here, bad input, and simple_spread trained -> exported -> served -> run over real sockets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from marlctl.envs import make_batched_env, make_env
from marlctl.envs.errors import EnvOptionError, InvalidActionError, UnknownEnvError

pytest.importorskip("pettingzoo")
pytest.importorskip("mpe2")

# Two agents with different observation sizes and action spaces (b's is Discrete(5, start=1)), no state(), no
# max_cycles; the episode ends when a plays 2 and b plays its env action 5 ("solved" in the infos).
UNEVEN = '''
import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv


class Uneven(ParallelEnv):
    metadata = {"name": "uneven_v0", "render_modes": []}

    def __init__(self, bonus: float = 1.0, start: int = 0):
        self.possible_agents = ["a", "b"]
        self.bonus, self.start = bonus, start

    def observation_space(self, agent):
        return spaces.Box(-1.0, 100.0, (2,) if agent == "a" else (4,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(3) if agent == "a" else spaces.Discrete(5, start=1)

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        self.t = 0
        self.x = float(np.random.default_rng(seed).integers(0, 50)) + self.start
        return self._obs(), {a: {} for a in self.agents}

    def _obs(self):
        return {"a": np.array([self.x, self.t], np.float32), "b": np.array([self.x, self.t, 7, 8], np.float32)}

    def step(self, actions):
        self.t += 1
        hit = actions["a"] == 2 and actions["b"] == 5
        rewards = {"a": 1.0 if hit else 0.0, "b": self.bonus if hit else 0.0}
        infos = {a: {"solved": hit} for a in self.agents}
        done = {a: hit for a in self.agents}
        obs = self._obs()
        if hit:
            self.agents = []
        return obs, rewards, done, {a: False for a in done}, infos


def not_an_env():
    return {"agents": 2}
'''


@pytest.fixture
def pz_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "uneven_pz.py").write_text(UNEVEN)
    (tmp_path / "broken_pz.py").write_text("raise ImportError('needs the package foo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_uneven_agents_are_padded_masked_and_mapped(pz_modules: Path) -> None:
    env_id = "pettingzoo:uneven_pz.Uneven,limit=6,success=solved,bonus=0.5"
    env = make_env(env_id)
    spec = env.spec
    assert (spec.n_agents, spec.obs_dim, spec.state_dim, spec.n_actions, spec.episode_limit) == (2, 4, 8, 5, 6)
    assert spec.has_won and spec.env_id == env_id
    ts = env.reset(3)
    x = ts.obs[0, 0]
    np.testing.assert_array_equal(ts.obs, [[x, 0, 0, 0], [x, 0, 7, 8]])  # a's 2 values zero-padded to 4
    np.testing.assert_array_equal(ts.state, ts.obs.reshape(-1))  # no state(): the padded observations
    np.testing.assert_array_equal(ts.avail, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # a has 3 actions only
    with pytest.raises(InvalidActionError, match="agent 0 chose action 3, not available now"):
        env.step([3, 0])
    for t in range(1, 7):  # never solved: the adapter truncates at limit=6 (the env itself never ends)
        ts = env.step([0, 4])
        assert ts.reward == 0.0 and ts.truncated == (t == 6) and not ts.terminated and not ts.info["won"]
    ts = env.reset()
    ts = env.step([2, 4])  # marlctl action 4 of b is its env action 5 (Discrete start=1)
    assert ts.terminated and not ts.truncated and ts.info["won"] and ts.reward == 1.5 and ts.info["score"] == 1.5
    mean = make_env("pettingzoo:uneven_pz.Uneven,limit=6,team_reward=mean,bonus=0.5")
    assert not mean.spec.has_won
    mean.reset(3)
    ts = mean.step([2, 4])
    assert ts.reward == 0.75 and not ts.info["won"]  # no success= option: the env defines no success
    start = make_env("pettingzoo:uneven_pz.Uneven,limit=6,start=10").reset(3)  # an int option reaches the env
    assert start.obs[0, 0] == x + 10


@pytest.mark.parametrize(
    ("env_id", "error", "says"),
    [
        ("pettingzoo:broken_pz", UnknownEnvError, r"broken_pz: the module does not import \(ImportError: needs the "
                                                   r"package foo\)"),
        ("pettingzoo:no_such_pz_module.env_v0", UnknownEnvError, "no module named 'no_such_pz_module'"),
        ("pettingzoo:uneven_pz.not_an_env,limit=3", UnknownEnvError, "built a dict, not a pettingzoo ParallelEnv"),
        ("pettingzoo:uneven_pz.Uneven", EnvOptionError, "has no max_cycles, so give the episode limit as limit=N"),
        ("pettingzoo:uneven_pz.Uneven,limit=3,speed=2", EnvOptionError,
         r"unknown option 'speed'; the constructor takes: bonus \(default 1.0\), start \(default 0\); marlctl's own: "
         "team_reward, limit, turn_based, success"),
        ("pettingzoo:uneven_pz.Uneven,limit=3,bonus=lots", EnvOptionError, "bonus='lots' is not a valid float"),
        ("pettingzoo:uneven_pz.Uneven,limit=3,render_mode=human", EnvOptionError, "unknown option 'render_mode'"),
        ("pettingzoo:pettingzoo.classic.tictactoe_v3,limit=9", UnknownEnvError,
         "is an AEC env, not a ParallelEnv; accepted: a ParallelEnv .*turn_based=true"),
        ("pettingzoo:mpe2.simple_spread_v3,continuous_actions=true", UnknownEnvError,
         r"agent agent_0's action space is Box\(.*\), not Discrete; marlctl takes Discrete action spaces only"),
        ("pettingzoo:mpe2.simple_spread_v3,local_ratio=2", EnvOptionError,
         "building the env with local_ratio=2.0 failed: AssertionError"),
        ("pettingzoo:mpe2.simple_spread_v3,team_reward=max", EnvOptionError, "team_reward must be sum or mean"),
        ("pettingzoo", UnknownEnvError, "needs a scenario: pettingzoo:<module>.<env>"),
        ("pettingzoo:mpe2.simple-spread", UnknownEnvError, "not a dotted Python name"),
    ],
)
def test_bad_pettingzoo_ids_name_what_is_wrong(pz_modules: Path, env_id: str, error: type, says: str) -> None:
    with pytest.raises(error, match=says):
        make_env(env_id)
    with pytest.raises(error, match=says):
        make_batched_env(env_id, 2)


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marlctl.cli.app", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "2000"})


def test_cli_bad_pettingzoo_ids_exit_2_with_one_line() -> None:
    for env_id, says in (("pettingzoo:mpe2.simple_spread_v3,continuous_actions=true", "not Discrete"),
                         ("pettingzoo:mpe2.simple_spread_v3,speed=3", "unknown option 'speed'")):
        out = _cli("envs", "check", env_id)
        assert out.returncode == 2 and says in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.slow
def test_simple_spread_train_export_serve_run_replay(tmp_path: Path) -> None:
    """`marlctl train` -> `export` -> one `marlctl serve` process per agent -> `marlctl run` over real sockets ->
    the records replayed against the models, with frames from the env's rgb_array render."""
    from marlctl.envs import env_spec
    from marlctl.serving.evaluate import load_team
    from marlctl.serving.records import load_record
    from marlctl.serving.replay import replay_record
    from serving_procs import start_agent

    env_id = "pettingzoo:mpe2.simple_spread_v3,max_cycles=10"
    run_dir, model = tmp_path / "run", tmp_path / "model"
    sets = ("env.num_envs=4", "replay.batch_size=4", "run.eval_episodes=2", "run.progress=false")
    out = _cli("train", "--algo", "qmix", "--env", env_id, "--steps", "200", "--seed", "0", "--out", str(run_dir),
               *[a for kv in sets for a in ("--set", kv)])
    assert out.returncode == 0, out.stderr
    out = _cli("export", str(run_dir), "--out", str(model))
    assert out.returncode == 0, out.stderr
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["algorithm"] == "qmix" and manifest["n_agents"] == 3 and manifest["env_id"] == env_id
    agents = [start_agent(model, i, tmp_path) for i in range(3)]
    try:
        out = _cli("run", "--env", env_id, "--agents", ",".join(a.address for a in agents), "--episodes", "3",
                   "--concurrency", "2", "--seed", "5", "--record", str(tmp_path / "records"), "--summary-json",
                   str(tmp_path / "summary.json"))
        assert out.returncode == 0, out.stderr
    finally:
        for a in agents:
            a.stop()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["episodes"] == 3 and summary["aborted"] == 0 and summary["fallbacks"] == []
    team = load_team(model, env_spec(env_id))
    for path in sorted((tmp_path / "records").iterdir()):
        rec = load_record(path, expect_env=env_id)
        assert rec.outcome.length == 10 and rec.outcome.truncated and not rec.outcome.won
        assert rec.outcome.episode_return == pytest.approx(float(rec.rewards_T.sum())) and rec.outcome.episode_return < 0
        replayed, frames = replay_record(rec, str(path), agents=team, render=True)
        assert replayed.match, replayed.problems  # the same seed re-simulates the same episode
        assert replayed.agreements == replayed.decisions == 10 * 3  # in-process ONNX Runtime agrees with the services
        assert len(frames) == 11 and frames[0].dtype == np.uint8 and frames[0].shape[2] == 3
        assert not np.array_equal(frames[0], frames[-1]), "the agents moved on screen"
