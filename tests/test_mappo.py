"""MAPPO: learning on hallway, truncation bootstrapping, the exported actor bundle, option errors."""
from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import torch
from algo_helpers import build_algo
from marlctl.agents.recurrent import AgentNet, AgentNetConfig
from marlctl.trainer.config import load_config
from marlctl.trainer.errors import ConfigValueError, TrainerError
from marlctl.trainer.ppo.core import PPOOptions

pytestmark = pytest.mark.usefixtures("one_thread")
build = functools.partial(build_algo, "mappo")


def test_mappo_learns_to_coordinate_on_hallway() -> None:
    """Random play mostly miscoordinates; MAPPO learns to reach a goal together (the paper: MA-PG methods
    settle at the near goal, return 4, instead of the optimum 5). MAPPO's own constant entropy weight 0.01, not
    hallway.policy.toml's anneal (which keeps play random for its first 20k steps on purpose)."""
    algo = build("hallway", "env.num_envs=16", "algo.entropy_coef=0.01", "algo.entropy_anneal_steps=0")
    first = algo.train_iteration()
    for _ in range(40):
        stats = algo.train_iteration()
    after = algo.evaluate(16)
    assert stats.env_steps > 0 and stats.updates == algo.opts.epochs * algo.opts.minibatches
    assert first.metrics["train/return"] < 2.0 and stats.metrics["train/return"] > 3.5, (first.metrics, stats.metrics)
    assert after["eval/return"] >= 4.0 and after["eval/win_rate"] == 1.0, after


def test_truncated_steps_bootstrap_from_the_final_state() -> None:
    algo = build("hallway:limit=2", "env.num_envs=8", "env.rollout=steps", "env.steps_per_iteration=6")
    ro, _, steps, _ = algo._collect()
    assert steps == 48
    truncated = ro.ended & ~ro.terminated
    assert truncated.any(), "limit=2 must truncate some episode"
    t, b = map(int, truncated.nonzero()[0])
    # The successor of a truncated step is the final state of that episode, not the next episode's start.
    if t + 1 < ro.values.shape[0]:
        assert ro.starts[t + 1, b]
        assert not torch.allclose(ro.next_values[t, b], ro.values[t + 1, b])
    # Terminated steps are never bootstrapped (their successor value is masked inside GAE).
    assert ro.valid.all()


def test_actor_bundle_is_a_plain_agent_net() -> None:
    algo = build("matrix:tad10", "env.num_envs=4")
    algo.train_iteration()
    bundle = algo.agent_bundle()
    buf = io.BytesIO()
    torch.save(bundle, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    net = AgentNet(AgentNetConfig(**loaded["config"]))
    net.load_state_dict(loaded["state_dict"])
    assert loaded["kind"] == "actor"
    # Input normalization learned from the rollouts travels with the actor (baked into its buffers).
    assert not torch.all(net.obs_mean == 0)
    obs = torch.eye(10)[:2]
    torch.testing.assert_close(net(obs, torch.tensor([-1, -1]), torch.tensor([0, 1]), torch.zeros(2, net.hidden_dim))[0],
                               algo.actor(obs, torch.tensor([-1, -1]), torch.tensor([0, 1]), torch.zeros(2, net.hidden_dim))[0])


def test_bad_options_name_what_is_valid() -> None:
    with pytest.raises(ConfigValueError, match="epochs"):
        PPOOptions(epochs=0).validate()
    with pytest.raises(TrainerError, match="algo.nope"):
        load_config("mappo", "hallway", overrides=["algo.nope=1"])


def test_same_seed_same_training() -> None:
    runs = []
    for _ in range(2):
        algo = build("matrix:tad10", "env.num_envs=8")
        runs.append([algo.train_iteration().metrics["loss/policy"] for _ in range(3)])
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("name", ["mappo", "tad-ppo"])
def test_each_evaluation_plays_new_seeds_and_a_resumed_run_continues_them(name: str) -> None:
    """matrix:tad10 draws its matrix per episode from the env seed: two evaluations of the same (untrained)
    policy play other matrices, so their returns differ; a copy loaded from the state dict plays what the
    original's next evaluation plays."""
    algo = build_algo(name, "matrix:tad10", "env.num_envs=8")
    first, second = algo.evaluate(8), algo.evaluate(8)
    assert first["eval/return"] != second["eval/return"], (first, second)
    copy = build_algo(name, "matrix:tad10", "env.num_envs=8")
    copy.load_state_dict(algo.state_dict())
    assert copy.evaluate(8) == algo.evaluate(8)


@pytest.mark.parametrize("name", ["mappo", "tad-ppo"])
def test_agent_specific_critic_reads_each_agents_own_observation(name: str) -> None:
    """``algo.critic_input = "state_obs"`` (MAPPO's agent-specific state): V_i moves with agent i's observation
    and with nobody else's; it trains, bootstraps truncated steps from the final observation, and resumes."""
    algo = build_algo(name, "hallway:limit=2", "env.num_envs=8", "env.rollout=steps", "env.steps_per_iteration=6",
                      "algo.critic_input=state_obs")
    spec = algo.spec
    state, obs = torch.randn(5, spec.state_dim), torch.randn(5, spec.n_agents, spec.obs_dim)
    actions = torch.zeros(5, spec.n_agents, dtype=torch.long)
    value = functools.partial(algo.critic, state) if name == "mappo" else (lambda o: algo.critic(state, actions, o))
    before = value(obs)
    moved = obs.clone()
    moved[:, 1] += 1.0
    changed = (value(moved) - before).abs().amax(0)
    if name == "mappo":  # V_i(s, o_i): only agent 1's value reads agent 1's observation
        assert changed[1] > 0 and torch.all(changed[[0]] == 0), changed
    else:  # TAD: V(s, a_<i) at step i reads agent i's observation: step 1 moves, step 0 does not
        assert changed[1] > 0 and changed[0] == 0, changed
    with pytest.raises(ValueError, match="critic_input = state_obs"):
        algo.critic(state) if name == "mappo" else algo.critic(state, actions)
    stats = algo.train_iteration()
    assert stats.updates > 0 and np.isfinite(stats.metrics["loss/value"])
    assert torch.all(algo.critic.obs_std != 1.0)  # the observation statistics are baked into the critic too
    copy = build_algo(name, "hallway:limit=2", "env.num_envs=8", "env.rollout=steps", "env.steps_per_iteration=6",
                      "algo.critic_input=state_obs")
    copy.load_state_dict(algo.state_dict())
    torch.testing.assert_close(copy.critic(state, obs) if name == "mappo" else copy.critic(state, actions, obs),
                               algo.critic(state, obs) if name == "mappo" else algo.critic(state, actions, obs))
    with pytest.raises(ConfigValueError, match="critic_input='obs'; valid: state, state_obs"):
        load_config(name, "hallway", overrides=["algo.critic_input=obs"])
