"""ReMIX and QTRAN learners on real rollouts: recent-episode sampling, padded batches stay finite, matrix game."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from marlctl.envs import env_spec
from marlctl.trainer.config import load_config
from marlctl.trainer.learners.matrix_tables import matrix_tables
from marlctl.trainer.learners.remix import RecentReplay, RemixBatch
from marlctl.trainer.registry import algorithm_spec
from marlctl.trainer.run import TrainingRun
from rich.console import Console

PP = "predator_prey:agents=2,prey=1,grid=5,punishment=0.5,reward=1,limit=12"
SMALL = ["env.num_envs=4", "replay.batch_size=4", "run.progress=false", "run.eval_interval=0", "run.save_interval=0"]


def build(algo: str, extra: tuple[str, ...] = ()):  # -> ValueAlgorithm
    cfg = load_config(algo, PP, overrides=[*SMALL, *extra], steps=100, seed=0, device="cpu")
    torch.manual_seed(0)
    return algorithm_spec(algo).build(cfg, env_spec(PP), torch.device("cpu"))


def test_recent_replay_draws_from_the_newest_episodes() -> None:
    algo = build("remix", ("algo.recent_episodes=4", "algo.recent_batch_size=6"))
    buf = algo.buffer
    assert isinstance(buf, RecentReplay)
    for _ in range(5):  # 20 episodes of 12 steps into the ring
        algo.train_iteration()
    assert len(buf) == 20
    newest_first = (buf.pos - 1 - np.arange(len(buf))) % buf.capacity  # ring rows, newest first
    buf.arrays.data["reward"][newest_first, 0] = np.arange(len(buf))  # tag each episode with its age
    batch = buf.sample(4, np.random.default_rng(0))
    assert isinstance(batch, RemixBatch) and batch.batch_size == 10
    assert batch.recent.tolist() == [False] * 4 + [True] * 6
    ages = batch.reward[4:, 0].numpy()  # 0 = newest
    assert ages.max() < 4, f"recent rows came from episodes of age {ages}"


def test_on_policy_switch_off_draws_no_recent_episodes() -> None:
    algo = build("remix", ("algo.on_policy=false",))
    algo.train_iteration()
    assert algo.buffer.sample(4, np.random.default_rng(0)).batch_size == 4


@pytest.mark.parametrize("algo_name", ["qtran-base", "qtran-alt", "remix"])
def test_losses_finite_and_trainable_on_padded_batches(algo_name: str) -> None:
    """Padding (filled=False, all-false avail masks after an episode ends) must not leak NaN/inf."""
    algo = build(algo_name)
    algo.train_iteration()
    batch = algo.buffer.sample(4, np.random.default_rng(1))
    cut = 5  # episode 0 ends after 5 steps: pad the rest like the buffer does
    batch.filled[0, cut:] = False
    batch.avail[0, cut + 1:] = False
    batch.actions[0, cut:] = 0
    learner = algo.learner
    before = [p.detach().clone() for p in learner.params]
    metrics = learner.update(batch)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, learner.params, strict=True))
    assert all(torch.isfinite(p).all() for p in learner.params)


def test_remix_finds_the_matrix_optimum(tmp_path: Path) -> None:
    """Like WQMIX, ReMIX's weighted projection lets QMIX's agents recover (A, A) under full exploration."""
    cfg = load_config("remix", "matrix:qtran", steps=3000, seed=0, device="cpu",
                      overrides=["env.num_envs=32", "learner.updates_per_iteration=8", "replay.batch_size=32",
                                 "learner.td_lambda=0", "run.progress=false", "run.eval_interval=0",
                                 "run.eval_episodes=8", "run.save_interval=0"])
    run = TrainingRun(cfg, tmp_path, env_spec("matrix:qtran"), Console(quiet=True))
    summary = run.loop_to_end()
    tables = matrix_tables(run.algo.learner, run.algo.buffer.gather(np.arange(1)))
    run.close()
    assert tables.greedy == (0, 0), tables.q_i
    assert summary.last_eval["eval/return"] == pytest.approx(8.0)
    assert 0.1 <= summary.last_train["train/w_mean"] <= 1.0


def test_qtran_feed_forward_unroll_equals_step_by_step() -> None:
    """The one-call path for feed-forward agents gives what a step-by-step unroll gives."""
    algo = build("qtran-base", ("agent.recurrent=false",))
    algo.train_iteration()
    batch = algo.buffer.sample(4, np.random.default_rng(2))
    learner = algo.learner
    q_fast, h_fast = learner.agent_features(batch)
    B, T1, N, _ = batch.obs.shape
    ids = torch.arange(N).repeat(B)
    for t in range(T1):
        q_t, h_t = learner.agent(batch.obs[:, t].reshape(B * N, -1), batch.prev_actions[:, t].reshape(-1), ids,
                                 learner.agent.initial_hidden(B * N))
        live = t < batch.views  # an episode's own views; the unroll leaves zeros after them
        torch.testing.assert_close(q_fast[live, t], q_t.view(B, N, -1)[live])
        torch.testing.assert_close(h_fast[live, t], h_t.view(B, N, -1)[live])
        assert torch.all(q_fast[~live, t] == 0)


def test_remix_options_reach_the_weights_and_bad_values_are_refused() -> None:
    from marlctl.trainer.errors import ConfigValueError

    cfg = load_config("remix", PP, overrides=["algo.bellman_error=false", "algo.on_policy=false", "algo.w_min=0.5",
                                              "algo.normalization=max"])
    w = cfg.algo.weight_config()
    assert (w.bellman_error, w.underestimation, w.mixer_gradient, w.on_policy) == (False, True, True, False)
    assert (w.w_min, w.normalization) == (0.5, "max")
    with pytest.raises(ConfigValueError, match="w_min"):
        load_config("remix", PP, overrides=["algo.w_min=0"])
    with pytest.raises(ConfigValueError, match="mean"):
        load_config("remix", PP, overrides=["algo.normalization=median"])
