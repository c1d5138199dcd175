"""The papers' games: payoffs and optima match the papers' tables, and the grid games' rules hold."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from marlctl.envs import make_batched_env, make_env
from marlctl.envs.gaussian_squeeze import squeeze_reward
from marlctl.envs.predator_prey import CATCH, STAY, PredatorPreyConfig, PredatorPreyGame
from marlctl.envs.vector import GameEnv

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


def _payoffs(env_id: str, task: int | None = None) -> np.ndarray:
    """The payoff table as the environment pays it, by stepping every joint action."""
    env = make_env(env_id + (f",task={task}" if task else ""))
    n = env.spec.n_actions
    table = np.zeros((n, n))
    for a1, a2 in itertools.product(range(n), range(n)):
        env.reset(0)
        ts = env.step([a1, a2])
        assert ts.terminated and not ts.truncated
        table[a1, a2] = ts.reward
        assert ts.info["score"] == pytest.approx(ts.reward)
    return table


def test_qtran_table_1a() -> None:
    expected = np.array([[8, -12, -12], [-12, 0, 0], [-12, 0, 0]], dtype=float)
    np.testing.assert_array_equal(_payoffs("matrix:qtran"), expected)
    env = make_env("matrix:qtran")
    assert env.spec.action_names == ("A", "B", "C") and env.spec.fully_observable
    env.reset(0)
    assert env.step([0, 0]).info == {"won": True, "score": 8.0}
    env.reset(0)
    assert env.step([1, 1]).info == {"won": False, "score": 0.0}


def test_tad_table_1_and_its_local_optima() -> None:
    table = _payoffs("matrix:tad")
    np.testing.assert_array_equal(table, [[10, -30, -30], [-30, 5, -30], [-30, -30, 1]])
    assert np.unravel_index(np.argmax(table), table.shape) == (0, 0)
    for k in (1, 2):  # (1,1) and (2,2) are Nash: no unilateral deviation pays
        assert table[k, k] >= table[:, k].max() and table[k, k] >= table[k, :].max()


def test_qtran21_appendix_game() -> None:
    env = make_batched_env("matrix:qtran21", 21 * 21)
    env.reset(0)
    u1, u2 = np.meshgrid(np.arange(21), np.arange(21), indexing="ij")
    step = env.step(np.stack([u1.ravel(), u2.ravel()], axis=1))
    table = step.reward.reshape(21, 21)
    assert table[5, 15] == 10.0 and table.max() == 10.0 and step.won.sum() == 1
    assert table[15, 5] == 5.0
    assert table[15, 5] == table[10:21, 0:11].max()  # a local maximum
    assert table[0, 0] == pytest.approx(max(5 - 25 - 25 / 9, 10 - 25 - 225))


# TAD Table 3, (matrix, printed row = agent 2's action, printed column = agent 1's action) -> value.
TAD10_SPOT_CHECKS = {
    (1, 0, 0): 10,
    (1, 1, 1): 9,
    (2, 0, 2): 10,
    (3, 4, 0): 10,
    (4, 4, 4): 6,
    (5, 0, 4): 6,
    (5, 4, 0): 10,
    (6, 4, 1): 10,
    (6, 0, 1): -16.0,
    (7, 0, 4): 10,
    (7, 3, 1): 4.7,
    (8, 2, 2): 10,
    (8, 3, 0): 9.8,
    (9, 4, 2): 10,
    (9, 1, 2): 8.8,
    (10, 4, 3): 10,
    (10, 0, 2): -20.0,
}


def test_tad10_matrices_match_table_3() -> None:
    tables = {k: _payoffs("matrix:tad10", task=k) for k in range(1, 11)}
    for (k, row_a2, col_a1), value in TAD10_SPOT_CHECKS.items():
        assert tables[k][col_a1, row_a2] == pytest.approx(value), (k, row_a2, col_a1)
    assert all(t.max() == pytest.approx(10.0) for t in tables.values())
    assert sum(t.max() for t in tables.values()) == pytest.approx(100.0)  # "sum rewards of the optimum is 100"
    assert np.isclose(tables[2], 10.0).sum() == 13  # matrix 2's checkerboard of optima


def test_tad10_draws_a_matrix_uniformly_and_shows_its_id() -> None:
    env = make_batched_env("matrix:tad10", 2000)
    bs = env.reset(11)
    ids = bs.obs.argmax(axis=-1)  # [B, N]
    assert np.array_equal(ids[:, 0], ids[:, 1]) and np.array_equal(bs.state.argmax(-1), ids[:, 0])
    assert np.all(bs.obs.sum(-1) == 1.0)
    counts = np.bincount(ids[:, 0], minlength=10)
    assert counts.min() > 140 and counts.max() < 260, counts  # 200 expected each
    # The optimum of the drawn matrix (argmax over its table) earns 10 in every env.
    from marlctl.envs.matrix import SCENARIOS

    payoffs = SCENARIOS["tad10"][0]  # [10, 5, 5] indexed [k, a1, a2]
    best = np.array([np.unravel_index(np.argmax(payoffs[k]), (5, 5)) for k in ids[:, 0]])
    step = env.step(best)
    assert np.all(step.reward == 10.0) and step.won.all() and step.terminated.all()
    assert not np.array_equal(step.obs.argmax(-1)[:, 0], ids[:, 0]), "auto-reset draws new matrices"


def test_hallway_optimum_local_optimum_and_miscoordination() -> None:
    env = make_env("hallway")
    assert (env.spec.n_agents, env.spec.n_actions, env.spec.episode_limit) == (2, 2, 100)

    def play(moves: list[list[int]]) -> tuple[float, object]:
        env.reset(0)
        total = 0.0
        for m in moves:
            ts = env.step(m)
            total += ts.reward
        return total, ts

    ret, ts = play([[0, 0]] * 3)  # both left to g1
    assert ret == 5.0 and ts.terminated and ts.info == {"won": True, "score": 8.0}
    ret, ts = play([[1, 1]])  # both right to g2
    assert ret == 4.0 and ts.terminated and ts.info == {"won": True, "score": 5.0}
    ret, ts = play([[0, 1]])  # agent 1 reaches g2 alone
    assert ret == -1.0 and ts.terminated and not ts.info["won"]
    ret, ts = play([[0, 0], [0, 0], [0, 1]])  # agent 0 reaches g1 first: no terminal reward
    assert ret == -3.0 and ts.terminated and not ts.info["won"]
    ret, ts = play([[0, 0], [1, 1]] * 50)  # back and forth until the limit
    assert ret == -100.0 and ts.truncated and not ts.terminated
    env.reset(0)
    ts = env.step([0, 0])
    np.testing.assert_array_equal(ts.obs[0], [0, 0, 1, 0, 0, 0, 0, 1, 0, 0])


def test_gaussian_squeeze_reward_is_the_papers_g() -> None:
    assert squeeze_reward(np.array(8.0), 1) == pytest.approx(8.0)
    assert squeeze_reward(np.array(9.0), 1) == pytest.approx(9.0 * np.exp(-1.0))
    assert squeeze_reward(np.array(8.0), 2) == pytest.approx(8.0 + 8.0 * np.exp(-9.0))
    assert squeeze_reward(np.array(5.0), 2) == pytest.approx(5.0 + 5.0 * np.exp(-36.0))
    xs = np.linspace(0, 18, 18001)
    g2 = squeeze_reward(xs, 2)
    assert 7.9 < xs[np.argmax(g2)] < 8.2 and g2.max() > 7.9  # the narrow right peak is the optimum
    left = g2[xs < 6.5]
    assert 4.9 < xs[np.argmax(left)] < 5.3 and left.max() < 5.2  # the wide left peak is lower

    env = make_batched_env("gaussian_squeeze:domains=2", 64)
    bs = env.reset(5)
    s_BN = bs.state.astype(np.float64)
    assert s_BN.shape == (64, 10) and s_BN.min() >= 0 and s_BN.max() <= 0.2
    assert np.array_equal(bs.obs[:, 3], bs.state)  # fully observable
    u_BN = np.random.default_rng(0).integers(0, 10, size=(64, 10))
    step = env.step(u_BN)
    expected = squeeze_reward((s_BN * u_BN).sum(axis=1), 2)
    np.testing.assert_allclose(step.reward, expected, rtol=1e-5)
    assert step.terminated.all() and not step.won.any()


def _board(agents: list[tuple[int, int]], prey: list[tuple[int, int]], **opts: float) -> GameEnv:
    """A 1-env predator-prey with pieces placed by hand (prey can't move: walls of predators or edges)."""
    cfg = PredatorPreyConfig(agents=len(agents), prey=len(prey), **opts)
    game = PredatorPreyGame("predator_prey:test", cfg, 1)
    env = GameEnv(game)
    env.reset(0)
    game.apos_BN2[0] = agents
    game.ppos_BP2[0] = prey
    return env


def _step(env: GameEnv, actions: list[int]):
    obs, state, avail = env.game.observe()
    env._avail = avail  # the hand-placed board's masks
    return env.step(np.array(actions))


def test_predator_prey_capture_needs_two_and_removes_them() -> None:
    # Prey in the corner (0,0); predators at (0,1) and (1,0); a third far away.
    env = _board([(0, 1), (1, 0), (5, 5)], [(0, 0), (9, 9)], punishment=1.5, reward=10.0)
    _, _, avail = env.game.observe()
    assert avail[0, 0, CATCH] and avail[0, 1, CATCH] and not avail[0, 2, CATCH]
    assert not avail[0, 0, LEFT] and not avail[0, 0, UP]  # prey cell and board edge
    ts = _step(env, [CATCH, CATCH, STAY])
    assert ts.reward == 10.0 and ts.info["score"] == 1.0 and not ts.done
    game = env.game
    assert not game.palive_BP[0, 0] and game.aalive_BN[0].tolist() == [False, False, True]
    assert np.all(ts.obs[:2] == 0) and ts.avail[:2].tolist() == [[False] * 4 + [True, False]] * 2
    assert ts.state[:100].sum() == 1 and ts.state[100:].sum() == 1  # one predator, one prey left


def test_predator_prey_lone_catch_is_punished() -> None:
    env = _board([(0, 1), (3, 3)], [(0, 0)], punishment=0.5, reward=1.0, grid=5)
    ts = _step(env, [CATCH, STAY])
    assert ts.reward == -0.5 and ts.info["score"] == 0.0 and not ts.terminated
    assert env.game.aalive_BN[0].all()


def test_predator_prey_win_when_every_prey_is_caught() -> None:
    env = _board([(0, 1), (1, 0)], [(0, 0)], grid=5, reward=1.0)
    assert env.spec.has_won
    ts = _step(env, [CATCH, CATCH])
    assert ts.terminated and ts.info["won"] and ts.reward == 1.0


def test_predator_prey_moves_and_view() -> None:
    env = _board([(2, 2), (2, 3)], [(4, 4)], grid=5, view=3)
    _, _, avail = env.game.observe()
    assert not avail[0, 0, RIGHT] and avail[0, 0, LEFT] and not avail[0, 0, CATCH]
    obs, _, _ = env.game.observe()
    view = obs[0, 0, :27].reshape(3, 3, 3)  # [channel, row, col] around agent 0 at (2, 2)
    assert view[0, 1, 1] == 1 and view[0, 1, 2] == 1 and view[0].sum() == 2  # self and the neighbour
    assert view[1].sum() == 0 and view[2].sum() == 0  # prey out of view, board all around
    np.testing.assert_allclose(obs[0, 0, 27:], [0.5, 0.5])
    ts = _step(env, [UP, DOWN])
    assert env.game.apos_BN2[0].tolist() == [[1, 2], [3, 3]] and ts.reward == 0.0
    corner = _board([(0, 0), (4, 4)], [(2, 2)], grid=5, view=3)
    obs, _, _ = corner.game.observe()
    outside = obs[0, 0, 18:27].reshape(3, 3)
    np.testing.assert_array_equal(outside, [[1, 1, 1], [1, 0, 0], [1, 0, 0]])


def test_predator_prey_prey_moves_stay_on_free_cells() -> None:
    env = make_batched_env("predator_prey:agents=4,prey=4,grid=5", 32)
    bs = env.reset(2)
    rng = np.random.default_rng(0)
    moved = False
    from marlctl.envs.vector import random_actions

    for _ in range(30):
        before = env.game.ppos_BP2.copy()
        bs = env.step(random_actions(bs.avail, rng))
        game = env.game
        moved |= bool((game.ppos_BP2 != before).any())
        occ = game._occupancy()
        assert ((occ == 1).sum(axis=(1, 2)) == game.aalive_BN.sum(1)).all()  # no two pieces share a cell
        assert ((occ == 2).sum(axis=(1, 2)) == game.palive_BP.sum(1)).all()
    assert moved


@pytest.mark.parametrize(
    ("env_id", "actions"),
    [
        ("matrix:qtran", [0, 0]),
        ("matrix:tad10,task=3", [4, 0]),
        ("hallway", [0, 0]),
        ("gaussian_squeeze", [5] * 10),
        ("predator_prey:agents=2,prey=1,grid=5", None),
    ],
)
def test_render_shows_the_step(env_id: str, actions: list[int] | None) -> None:
    """Frames (for GIF replays) are uint8 RGB and change when the state or the last joint action does."""
    env = make_env(env_id)
    ts = env.reset(4)
    before = env.render()
    if actions is None:  # the first available move of each predator
        actions = [int(np.flatnonzero(ts.avail[n, :STAY])[0]) for n in range(env.spec.n_agents)]
    env.step(np.array(actions))
    after = env.render()
    assert before.dtype == after.dtype == np.uint8 and before.shape == after.shape and before.shape[2] == 3
    assert not np.array_equal(before, after)
