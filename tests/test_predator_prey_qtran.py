"""QTRAN's modified predator-prey (``predator_prey_qtran``): the paper's rules, defaults and trainer settings.

The registry-wide conformance checks (tests/test_envs_api.py) run the bare family id; these tests check the
rules on hand-placed boards, the 7x7 setting, and that a feed-forward three-layer agent trains and exports.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from marlctl.envs import env_spec, make_batched_env, make_env
from marlctl.envs.errors import EnvOptionError
from marlctl.envs.predator_prey import STAY
from marlctl.envs.predator_prey_qtran import QtranPredatorPreyConfig, QtranPredatorPreyGame
from marlctl.envs.vector import GameBatchedEnv, GameEnv, random_actions

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


def _board(agents: list[tuple[int, int]], prey: list[tuple[int, int]], num_envs: int = 1, **opts: float):
    """A game with pieces placed by hand in every environment of the batch."""
    cfg = QtranPredatorPreyConfig(agents=len(agents), prey=len(prey), **opts)
    env = GameBatchedEnv(QtranPredatorPreyGame("predator_prey_qtran:test", cfg, num_envs))
    env.reset(0)
    env.game.apos_BN2[:] = agents
    env.game.ppos_BP2[:] = prey
    env._avail = env.game.observe()[2]  # the hand-placed board's masks
    return env


def _stay(env: GameBatchedEnv):
    return env.step(np.full((env.num_envs, env.spec.n_agents), STAY))


def test_defaults_are_the_papers_5x5_setting() -> None:
    spec = env_spec("predator_prey_qtran")
    cfg = QtranPredatorPreyConfig()
    assert (cfg.agents, cfg.prey, cfg.grid, cfg.view, cfg.reward, cfg.limit) == (2, 1, 5, 5, 1.0, 100)
    assert spec.n_actions == 5 and spec.action_names == ("up", "down", "left", "right", "stay")
    assert spec.episode_limit == 100 and not spec.has_won and spec.state_dim == 2 * 5 * 5
    big = env_spec("predator_prey_qtran:agents=4,prey=2,grid=7")
    assert (big.n_agents, big.state_dim) == (4, 2 * 7 * 7)


def test_two_catchers_pay_one_and_the_prey_regenerates() -> None:
    # Prey at (2,2): predator 0 two cells left of it (same row), predator 1 two cells above (same column).
    env = _board([(2, 0), (0, 2)], [(2, 2)], num_envs=64, punishment=1.5)
    step = _stay(env)
    np.testing.assert_array_equal(step.reward, 1.0)
    np.testing.assert_array_equal(step.score, 1.0)
    game = env.game
    # Regenerated at a random free cell (then one random prey move): far from (2,2) in many of the boards,
    # never on a predator, on many different cells.
    moved = np.abs(game.ppos_BP2[:, 0] - [2, 2]).sum(axis=1)
    assert (moved > 1).mean() > 0.5
    assert not ((game.ppos_BP2[:, 0, None, :] == game.apos_BN2).all(-1)).any()
    assert len({tuple(p) for p in game.ppos_BP2[:, 0]}) >= 8


def test_a_lone_catcher_costs_p_and_the_prey_stays() -> None:
    env = _board([(2, 1), (4, 4)], [(2, 2)], num_envs=64, punishment=1.5)  # predator 1 off every line
    step = _stay(env)
    np.testing.assert_array_equal(step.reward, -1.5)
    np.testing.assert_array_equal(step.score, 0.0)
    # No regeneration: each prey made at most one random move from (2,2).
    assert (np.abs(env.game.ppos_BP2[:, 0] - [2, 2]).sum(axis=1) <= 1).all()


def test_catching_is_a_cardinal_direction_within_the_view() -> None:
    # Diagonal neighbours never catch; a prey in line 3 cells away is outside a 5x5 view (reach 2).
    diagonal = _board([(1, 1), (3, 3)], [(2, 2)])
    assert _stay(diagonal).reward[0] == 0.0
    far = _board([(3, 0), (0, 3)], [(3, 3)], grid=7)
    assert _stay(far).reward[0] == 0.0
    near = _board([(3, 1), (1, 3)], [(3, 3)], grid=7)
    assert _stay(near).reward[0] == 1.0
    narrow = _board([(3, 1), (1, 3)], [(3, 3)], grid=7, view=3)  # reach 1: two cells is out of view
    assert _stay(narrow).reward[0] == 0.0


def test_reach_1_catches_adjacent_prey_only() -> None:
    """The adjacency reading of "within the cardinal direction": two cells away in line is no catch, even in view."""
    two_away = _board([(3, 1), (1, 3)], [(3, 3)], grid=7, reach=1)
    assert _stay(two_away).reward[0] == 0.0
    adjacent = _board([(3, 2), (2, 3)], [(3, 3)], grid=7, reach=1, punishment=1.5)
    assert _stay(adjacent).reward[0] == 1.0
    lone = _board([(3, 2), (1, 3)], [(3, 3)], grid=7, reach=1, punishment=1.5)  # predator 1 two cells above
    assert _stay(lone).reward[0] == -1.5
    assert env_spec("predator_prey_qtran:reach=1").obs_dim == env_spec("predator_prey_qtran").obs_dim  # same view


def test_catches_count_after_the_predators_move_and_per_prey() -> None:
    # Predator 0 steps into prey 0's row; predator 1 was already in its column: a joint catch. Prey 1 at (6,6)
    # is in line with predator 2 only: a lone catch. Predator 3 is far from both.
    env = _board([(1, 0), (0, 2), (6, 4), (4, 5)], [(2, 2), (6, 6)], grid=7, punishment=0.5)
    step = env.step(np.array([[DOWN, STAY, STAY, STAY]]))
    assert env.game.apos_BN2[0, 0].tolist() == [2, 0]
    assert step.reward[0] == pytest.approx(1.0 - 0.5) and step.score[0] == 1.0


def test_moves_off_the_board_or_onto_a_piece_are_unavailable() -> None:
    env = _board([(0, 0), (0, 1)], [(1, 0)])
    avail = env._avail[0]
    assert avail[0].tolist() == [False, False, False, False, True]  # up/left: edge; right: predator; down: prey
    assert avail[1].tolist() == [False, True, False, True, True]


def test_fixed_length_episodes_never_terminate() -> None:
    env = make_batched_env("predator_prey_qtran:agents=4,prey=2,grid=7,punishment=0.5", 8)
    step = env.reset(3)
    rng = np.random.default_rng(0)
    joint = np.zeros(8)
    for t in range(1, 201):
        step = env.step(random_actions(step.avail, rng))
        assert not step.terminated.any() and not step.won.any()
        assert step.truncated.all() == (t % 100 == 0) and step.truncated.any() == (t % 100 == 0)
        if t == 100:
            joint = step.score.copy()
    assert joint.sum() > 0  # random predators sometimes catch together; score counts those catches


def test_the_7x7_setting_batched_equals_single() -> None:
    env_id = "predator_prey_qtran:agents=4,prey=2,grid=7"
    batched, single = make_batched_env(env_id, 2), make_env(env_id)
    step = batched.reset(5)
    ts = single.reset(5, index=1)
    rng = np.random.default_rng(1)
    for _ in range(100):
        np.testing.assert_array_equal(step.obs[1], ts.obs)
        actions = random_actions(step.avail, rng)
        step, ts = batched.step(actions), single.step(actions[1])
        assert step.reward[1] == ts.reward and step.score[1] == ts.info["score"]
    assert ts.truncated and step.truncated[1]


@pytest.mark.parametrize(("env_id", "says"), [
    ("predator_prey_qtran:agents=23,prey=2", "must leave a free cell"),
    ("predator_prey_qtran:catch=1", "valid options: agents"),
    ("predator_prey_qtran:view=4", "predator_prey_qtran: view must be an odd number"),
    ("predator_prey_qtran:reach=3", r"reach must be 0 \(= view // 2\) or 1..2"),
    ("predator_prey_qtran:reach=-1", "reach must be 0"),
])
def test_bad_options_name_what_is_valid(env_id: str, says: str) -> None:
    with pytest.raises(EnvOptionError, match=says):
        make_env(env_id)


def test_feed_forward_three_layer_agents_train_and_export(tmp_path: Path, one_thread) -> None:
    """The family's packaged trainer settings (Table 5: feed-forward, three hidden layers of 64, Adam,
    epsilon to 0.1) reach the agent network, a short real run trains, and the export verifies it."""
    from marlctl.agents.export import ExportConfig, export_team
    from marlctl.trainer.config import load_config
    from marlctl.trainer.run import train_run
    from rich.console import Console

    cfg = load_config("qtran-base", "predator_prey_qtran:punishment=0.5", steps=1600, seed=0, device="cpu",
                      overrides=["run.eval_interval=1600", "run.eval_episodes=4", "run.progress=false",
                                 "replay.batch_size=4", "env.num_envs=8"])
    assert (cfg.agent.recurrent, cfg.agent.hidden_layers, cfg.agent.prev_action_input) == (False, 3, False)
    assert (cfg.optim.optimizer, cfg.exploration.epsilon_finish) == ("adam", 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # feed-forward on a partially observable game: the paper's choice
        train_run(cfg, tmp_path / "run", Console(quiet=True))
    result = export_team(tmp_path / "run", tmp_path / "model", config=ExportConfig(verify_episodes=1))
    assert result.source == "env"
    for check in result.agents:
        assert check.steps == 100 and check.max_abs_diff_scores < 1e-4 and check.action_agreement == 1.0
    import torch

    state = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)["agent"]["state_dict"]
    assert [k for k in state if k.endswith("weight")] == ["fc_in.weight", "mlp.0.weight", "rnn.weight", "head.weight"]


def test_single_env_replays_batched_env_zero() -> None:
    game_env = GameEnv(QtranPredatorPreyGame("predator_prey_qtran", QtranPredatorPreyConfig(), 1))
    ts = game_env.reset(9)
    batched = make_batched_env("predator_prey_qtran", 3)
    np.testing.assert_array_equal(batched.reset(9).obs[0], ts.obs)
