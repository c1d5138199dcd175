"""QTRAN Table 1 on ``matrix:qtran`` with full exploration (epsilon = 1), through the real training loop.

QTRAN-base and QTRAN-alt recover Q_jt (8 at (A, A), -12 on A's row/column, 0 elsewhere) and their
decentralized greedy joint action is (A, A); VDN and QMIX, limited by additivity / monotonicity,
settle on a non-optimal joint action (the paper's contrast, Tables 1e-1f).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from marlctl.envs import env_spec
from marlctl.trainer.config import load_config
from marlctl.trainer.learners.matrix_tables import MatrixTables, matrix_tables
from marlctl.trainer.run import TrainingRun
from rich.console import Console

PAYOFF = np.array([[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 0.0]])  # Table 1a
A = 0
# A small fixed budget: 4000 one-step episodes, 32 envs per iteration, 8 updates per iteration (1000 updates).
BUDGET = ["env.num_envs=32", "learner.updates_per_iteration=8", "run.eval_interval=0", "run.eval_episodes=8",
          "run.progress=false", "run.save_interval=0"]


def train(algo: str, tmp: Path, extra: tuple[str, ...] = ()) -> tuple[TrainingRun, MatrixTables, dict]:
    cfg = load_config(algo, "matrix:qtran", overrides=[*BUDGET, *extra], steps=4000, seed=0, device="cpu")
    assert cfg.exploration.epsilon_start == cfg.exploration.epsilon_finish == 1.0  # full exploration
    run = TrainingRun(cfg, tmp, env_spec(cfg.env.env_id), Console(quiet=True))
    summary = run.loop_to_end()
    first = run.algo.buffer.gather(np.arange(1))
    tables = matrix_tables(run.algo.learner, first)
    run.close()
    return run, tables, summary.last_eval


@pytest.mark.parametrize("algo", ["qtran-base", "qtran-alt"])
def test_qtran_recovers_table_1(algo: str, tmp_path: Path) -> None:
    run, t, last_eval = train(algo, tmp_path, ("mixer.joint_embed_dim=32",))
    # The factorization conditions hold at the end (measured 0.004-0.04 against a payoff spread of 20).
    assert run.last_train["train/opt_gap"] < 0.2 and run.last_train["train/nopt_gap"] < 0.2, run.last_train
    assert t.greedy == (A, A), f"{algo} greedy joint action {t.greedy}, Q_i={t.q_i}"
    assert t.q_joint[A, A] == pytest.approx(8.0, abs=0.5)
    np.testing.assert_allclose(t.q_joint, PAYOFF, atol=1.0)  # Table 1c: Q_jt reconstructs the payoff
    assert last_eval["eval/return"] == pytest.approx(8.0)  # decentralized greedy agents play (A, A)


def test_condition_gaps_show_an_untransformed_qtran(tmp_path: Path) -> None:
    """Without L_opt and L_nopt nothing fits Q_i and V_jt to Q_jt: the logged gaps say so."""
    run, t, _ = train("qtran-base", tmp_path, ("mixer.joint_embed_dim=32", "algo.lambda_opt=0", "algo.lambda_nopt=0"))
    np.testing.assert_allclose(t.q_joint, PAYOFF, atol=1.0)  # Q_jt itself is learned by L_td alone
    assert run.last_train["train/opt_gap"] > 1.0, run.last_train


@pytest.mark.parametrize("algo", ["vdn", "qmix"])
def test_vdn_and_qmix_miss_the_optimum(algo: str, tmp_path: Path) -> None:
    _, t, last_eval = train(algo, tmp_path)
    assert t.greedy != (A, A), f"{algo} unexpectedly found (A, A): Q_i={t.q_i}"
    assert last_eval["eval/return"] < 8.0
    assert t.q_joint[A, A] < 0.0  # the structural constraint drags Q_tot(A, A) far below the payoff 8


def test_vjt_zero_warns_on_partially_observable_env() -> None:
    from marlctl.trainer.config import ConfigWarning, check_against_env

    cfg = load_config("qtran-base", "predator_prey", overrides=["algo.vjt_zero=true"], steps=10)
    with pytest.warns(ConfigWarning, match="vjt_zero"):
        check_against_env(cfg, env_spec("predator_prey"))
    fo = load_config("qtran-base", "matrix:qtran", overrides=["algo.vjt_zero=true"], steps=10)
    assert check_against_env(fo, env_spec("matrix:qtran")) == []


def test_vjt_zero_run_on_matrix_game(tmp_path: Path) -> None:
    """The paper's own Table 1 setting (footnote 1): V_jt = 0 on the fully observable game."""
    _, t, _ = train("qtran-base", tmp_path, ("mixer.joint_embed_dim=32", "algo.vjt_zero=true"))
    assert t.greedy == (A, A)
    assert t.q_joint[A, A] == pytest.approx(8.0, abs=0.5)
