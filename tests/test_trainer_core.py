"""Trainer core: config layering and errors, replay, epsilon-greedy, batched rollout (hidden reset where done),
mixers, agent bundles, and every registered algorithm training a few hundred steps on the real envs."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from marlctl.agents.bundle import load_agent_bundle, make_agent_bundle_entry
from marlctl.agents.errors import ModelError
from marlctl.agents.recurrent import AgentNet, AgentNetConfig
from marlctl.envs import make_batched_env
from marlctl.envs.base import EnvSpec
from marlctl.envs.errors import BackendUnavailableError
from marlctl.trainer.config import ConfigWarning, TrainConfig, check_against_env, load_config
from marlctl.trainer.errors import ConfigValueError, UnknownAlgorithmError, UnknownConfigKeyError
from marlctl.trainer.mixers.qmix import QMixer
from marlctl.trainer.registry import ALGORITHMS, algorithm_spec
from marlctl.trainer.replay import ReplayBuffer
from marlctl.trainer.rollout import RolloutWorker, epsilon_greedy

# ------------------------------------------------------------------ config


def test_config_layers_defaults_env_family_file_and_set(tmp_path: Path) -> None:
    cfg = load_config("qmix", "matrix:qtran")
    assert cfg.optim.lr == 5e-4 and cfg.learner.gamma == 0.99  # pymarl defaults
    assert cfg.agent.recurrent is False and cfg.optim.optimizer == "adam"  # configs/env/matrix.toml
    (tmp_path / "c.toml").write_text("[optim]\nlr = 0.01\n[env]\nnum_envs = 4\n")
    cfg = load_config("qmix", "matrix:qtran", config_file=tmp_path / "c.toml", overrides=["optim.lr=0.002"],
                      steps=123, seed=7)
    assert (cfg.optim.lr, cfg.env.num_envs, cfg.run.steps, cfg.run.seed) == (0.002, 4, 123, 7)
    (tmp_path / "c.json").write_text('{"replay": {"batch_size": 3}, "learner": {"double_q": false}}')
    cfg = load_config("vdn", "smax:3m", config_file=tmp_path / "c.json", overrides=["learner.td_lambda=0.6"])
    assert cfg.replay.batch_size == 3 and cfg.learner.double_q is False and cfg.learner.td_lambda == 0.6
    assert cfg.env.num_envs == 64  # configs/env/smax.toml: >= 64 envs per batched call


def test_config_errors_name_what_is_valid(tmp_path: Path) -> None:
    with pytest.raises(UnknownAlgorithmError, match="valid: .*qmix.*vdn"):
        load_config("qmixx", "matrix:qtran")
    with pytest.raises(UnknownConfigKeyError, match=r"optim\.lrr.*valid keys.*optimizer, lr"):
        load_config("vdn", "matrix:qtran", overrides=["optim.lrr=1"])
    with pytest.raises(UnknownConfigKeyError, match="valid sections: run, env"):
        load_config("vdn", "matrix:qtran", overrides=["optimizer.lr=1"])
    with pytest.raises(ConfigValueError, match="valid: rmsprop, adam"):
        load_config("vdn", "matrix:qtran", overrides=["optim.optimizer=sgd"])
    with pytest.raises(ConfigValueError, match="not a number"):
        load_config("vdn", "matrix:qtran", overrides=["optim.lr=fast"])
    with pytest.raises(ConfigValueError, match="section.key=value"):
        load_config("vdn", "matrix:qtran", overrides=["lr=1"])
    with pytest.raises(UnknownConfigKeyError, match="takes no keys"):
        load_config("vdn", "matrix:qtran", overrides=["algo.alpha=0.3"])
    with pytest.raises(ConfigValueError, match=r"algo\.alpha.*\(0, 1\]"):
        load_config("ow-qmix", "matrix:qtran", overrides=["algo.alpha=0"])
    (tmp_path / "bad.toml").write_text("[optim\nlr=")
    with pytest.raises(ConfigValueError, match="not valid TOML"):
        load_config("vdn", "matrix:qtran", config_file=tmp_path / "bad.toml")


@dataclass(frozen=True)
class _NeedsFullObs:
    """Options with an env-dependent warning, like QTRAN's V_jt = 0."""

    zero_v: bool = True
    """Pretend option."""

    def env_warnings(self, spec: EnvSpec) -> list[str]:
        return [f"zero_v on partially observable {spec.env_id}"] if self.zero_v and not spec.fully_observable else []


def test_env_warnings_mechanism() -> None:
    cfg = TrainConfig(algo=_NeedsFullObs())
    partial = EnvSpec("x:p", 2, 3, 4, 5, 6, fully_observable=False)
    full = EnvSpec("x:f", 2, 3, 4, 5, 6, fully_observable=True)
    with pytest.warns(ConfigWarning, match="zero_v on partially observable x:p"):
        assert check_against_env(cfg, partial) == ["zero_v on partially observable x:p"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_against_env(cfg, full) == []
    with pytest.raises(ConfigValueError, match="exclusive"):
        check_against_env(load_config("vdn", "hallway", overrides=["learner.td_lambda=0.5", "learner.n_step=3"]),
                          full)


def test_vjt_zero_on_partially_observable_env_warns_in_the_run_log(tmp_path: Path) -> None:
    from marlctl.trainer.run import train_run

    if "qtran-base" not in ALGORITHMS:
        pytest.skip("qtran-base is not registered")
    cfg = load_config("qtran-base", "predator_prey:agents=2,prey=1,grid=5",
                      overrides=[*TINY, "algo.vjt_zero=true"], steps=10, device="cpu")
    summary = train_run(cfg, tmp_path / "run")
    assert any("vjt_zero" in w and "partially observable" in w for w in summary.warnings)
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"event": "warning"' in log and "vjt_zero" in log
    with pytest.raises(ConfigValueError, match="lambda_opt"):
        load_config("qtran-base", "matrix:qtran", overrides=["algo.lambda_opt=-1"])


# ------------------------------------------------------------------ replay / exploration


def _spec(T: int = 4) -> EnvSpec:
    return EnvSpec("t", n_agents=2, obs_dim=3, state_dim=5, n_actions=4, episode_limit=T)


def test_replay_ring_sample_and_state_roundtrip() -> None:
    spec = _spec()
    buf = ReplayBuffer(spec, capacity=3, max_t=4)
    src = ReplayBuffer(spec, capacity=5, max_t=4).arrays.data
    for i in range(5):
        src["reward"][i, : i % 4 + 1] = i + 1
        src["filled"][i, : i % 4 + 1] = True
        src["obs"][i] = i
    buf.insert(src, np.array([0, 1]))
    buf.insert(src, np.array([2, 3, 4]))  # overwrites the two oldest
    assert len(buf) == 3 and buf.episodes_added == 5
    assert sorted(buf.arrays.data["obs"][:, 0, 0, 0].tolist()) == [2.0, 3.0, 4.0]
    batch = buf.sample(8, np.random.default_rng(0))
    assert batch.obs.shape == (8, batch.max_t + 1, 2, 3) and batch.actions.shape == (8, batch.max_t, 2)
    assert batch.max_t == int(buf.lengths.max())
    assert torch.equal(batch.prev_actions[:, 0], torch.full((8, 2), -1))
    # each sampled episode's reward sum is consistent with its stored id (i+1 per filled step)
    ids = batch.obs[:, 0, 0, 0].long()
    torch.testing.assert_close(batch.reward.sum(1), ((ids + 1) * ((ids % 4) + 1)).float())
    clone = ReplayBuffer(spec, capacity=3, max_t=4)
    clone.load_state_dict(buf.state_dict())
    for k in buf.arrays.data:
        assert np.array_equal(clone.arrays.data[k], buf.arrays.data[k])
    assert (clone.pos, clone.size) == (buf.pos, buf.size)


def test_epsilon_greedy_never_unavailable_and_greedy_at_zero() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(64, 3, 5))
    avail = rng.random((64, 3, 5)) < 0.5
    avail[..., 2] = True
    greedy = epsilon_greedy(q, avail, 0.0, rng)
    assert np.array_equal(greedy, np.where(avail, q, -np.inf).argmax(-1))
    for eps in (0.3, 1.0):
        a = epsilon_greedy(q, avail, eps, rng)
        assert np.take_along_axis(avail, a[..., None], -1).all()
    counts = np.bincount(epsilon_greedy(np.zeros((20000, 1, 4)), np.ones((20000, 1, 4), bool), 1.0, rng).ravel())
    assert counts.min() > 4500  # uniform over the available actions


# ------------------------------------------------------------------ rollout


class RecordingAgentNet(AgentNet):
    """The real agent network, recording the hidden state and previous action of every call."""

    def __init__(self, config: AgentNetConfig) -> None:
        super().__init__(config)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, obs_BO, prev_action_B, agent_id_B, hidden_BH):  # type: ignore[override]
        self.calls.append((hidden_BH.clone(), prev_action_B.clone()))
        return super().forward(obs_BO, prev_action_B, agent_id_B, hidden_BH)


def test_rollout_resets_hidden_exactly_where_done_and_cuts_episodes() -> None:
    torch.manual_seed(0)
    env = make_batched_env("hallway", 6)  # multi-step episodes of different lengths, auto-reset
    spec = env.spec
    net = RecordingAgentNet(AgentNetConfig(spec.obs_dim, spec.n_actions, spec.n_agents, hidden_dim=16))
    worker = RolloutWorker(env, net, torch.device("cpu"))
    buf = ReplayBuffer(spec, capacity=500, max_t=spec.episode_limit)
    dones: list[np.ndarray] = []
    real_step = env.step

    def step_and_record(actions: np.ndarray):  # the real env's step; remember its done flags
        out = real_step(actions)
        dones.append(out.done.copy())
        return out

    env.step = step_and_record  # type: ignore[method-assign]
    res = worker.run_steps(60, epsilon=0.5, rng=np.random.default_rng(0), sink=buf, reset_seed=12)
    assert res.env_steps == 60 * 6 and res.episodes > 6
    assert any(d.any() and not d.all() for d in dones)  # some envs ended while others went on
    first_B = np.ones(6, dtype=bool)  # envs whose episode starts at this call
    for k, (hidden_RH, prev_R) in enumerate(net.calls):
        hidden_BNH = hidden_RH.view(6, spec.n_agents, -1)
        assert torch.all(hidden_BNH[first_B] == 0), f"call {k}: hidden not reset at an episode start"
        assert torch.all(hidden_BNH[~first_B].abs().sum(-1) > 0), f"call {k}: hidden reset mid-episode"
        assert np.array_equal(prev_R.numpy() == -1, np.repeat(first_B, spec.n_agents))
        first_B = dones[k]
    # Episodes went into the buffer whole, when they ended: returns match, taken actions were available.
    assert len(buf) == res.episodes
    batch = buf.gather(np.arange(len(buf)))
    assert torch.equal(batch.filled.sum(1), torch.from_numpy(res.lengths))
    np.testing.assert_allclose(batch.reward.sum(1).double().numpy(), res.returns, rtol=1e-6)
    taken_avail = batch.avail[:, :-1].gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
    assert torch.all(taken_avail[batch.filled])
    assert not batch.filled[:, 0].logical_not().any()


def test_greedy_rollout_matches_learner_unroll_of_stored_episodes() -> None:
    """What the agent saw while acting (obs, prev action, hidden) is what the learner unrolls from the buffer."""
    cfg = load_config("vdn", "hallway", overrides=["env.num_envs=4", "agent.hidden_dim=16"])
    from marlctl.trainer.learners.vdn_qmix import VDNLearner

    env = make_batched_env("hallway", 4)
    torch.manual_seed(1)
    learner = VDNLearner(cfg, env.spec, torch.device("cpu"))
    buf = ReplayBuffer(env.spec, 64, env.spec.episode_limit)
    worker = RolloutWorker(env, learner.agent, torch.device("cpu"))
    res = worker.run_episodes(8, seed=5, epsilon=0.0, rng=np.random.default_rng(0), sink=buf)
    assert res.episodes == 8 and len(buf) == 8
    batch = buf.gather(np.arange(8))
    with torch.no_grad():
        q = learner.agent_q(batch)[:, :-1]  # [B, T, N, A]
    greedy = q.masked_fill(~batch.avail[:, :-1], float("-inf")).argmax(-1)
    assert torch.equal(greedy[batch.filled], batch.actions[batch.filled])


@pytest.mark.parametrize("recurrent", [True, False])
def test_packed_unroll_equals_a_step_by_step_unroll_on_each_episodes_own_steps(recurrent: bool) -> None:
    """``agent_unroll.unroll`` computes each episode's real views only (episodes of different lengths,
    packed longest first): there it gives the scores, features and gradients of a plain step-by-step
    unroll of the whole padded batch; after an episode's end it gives zeros."""
    from marlctl.trainer.agent_unroll import unroll

    torch.manual_seed(0)
    B, T, N, obs_dim, A = 7, 9, 3, 5, 4
    net = AgentNet(AgentNetConfig(obs_dim=obs_dim, n_actions=A, n_agents=N, hidden_dim=8, recurrent=recurrent,
                                  hidden_layers=3))
    obs, prev = torch.randn(B, T, N, obs_dim), torch.randint(-1, A, (B, T, N))
    views = torch.tensor([9, 2, 5, 5, 3, 9, 7])
    live_BT = torch.arange(T) < views.unsqueeze(1)
    q, h = unroll(net, obs, prev, views)
    q_only, no_h = unroll(net, obs, prev, views, features=False)  # the scores-only path: same scores
    assert no_h is None and torch.equal(q_only, q)
    w_q, w_h = torch.randn_like(q), torch.randn_like(h)
    ((q * w_q).sum() + (h * w_h).sum()).backward()
    packed_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()

    ids, hidden, loss = torch.arange(N).repeat(B), net.initial_hidden(B * N), torch.zeros(())
    for t in range(T):
        q_t, hidden = net(obs[:, t].reshape(B * N, -1), prev[:, t].reshape(-1), ids, hidden)
        q_t, h_t, live = q_t.view(B, N, -1), hidden.view(B, N, -1), live_BT[:, t]
        torch.testing.assert_close(q[live, t], q_t[live].detach())
        torch.testing.assert_close(h[live, t], h_t[live].detach())
        assert torch.all(q[~live, t] == 0) and torch.all(h[~live, t] == 0)
        m = live.float().view(B, 1, 1)
        loss = loss + (q_t * w_q[:, t] * m).sum() + (h_t * w_h[:, t] * m).sum()
    loss.backward()
    for packed, plain in zip(packed_grads, (p.grad for p in net.parameters()), strict=True):
        torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-5)


def test_per_transition_nets_run_on_real_rows_only() -> None:
    """A mixer run through ``on_real_rows`` gives its own output at the real transitions and 0 at padding."""
    from marlctl.trainer.masked import on_real_rows

    torch.manual_seed(0)
    mixer = QMixer(n_agents=3, state_dim=5)
    q, s = torch.randn(4, 6, 3), torch.randn(4, 6, 5)
    mask = torch.arange(6) < torch.tensor([6, 1, 3, 4]).unsqueeze(1)
    packed = on_real_rows(mixer, mask, q, s)
    torch.testing.assert_close(packed[mask], mixer(q, s)[mask])
    assert torch.all(packed[~mask] == 0)
    q_tot, grad = on_real_rows(mixer.forward_with_gradient, mask, q, s)
    torch.testing.assert_close(grad[mask], mixer.forward_with_gradient(q, s)[1][mask])
    none = on_real_rows(mixer, torch.zeros_like(mask), q, s)  # no real row at all: zeros of the full shape
    assert none.shape == (4, 6) and torch.all(none == 0)


def test_qmix_mixer_is_monotonic() -> None:
    torch.manual_seed(0)
    mixer = QMixer(n_agents=3, state_dim=5)
    q = torch.randn(4, 6, 3, requires_grad=True)
    mixer(q, torch.randn(4, 6, 5)).sum().backward()
    assert torch.all(q.grad >= 0)


# ------------------------------------------------------------------ bundles


def test_agent_bundle_roundtrip_and_refusals(tmp_path: Path) -> None:
    net = AgentNet(AgentNetConfig(obs_dim=4, n_actions=3, n_agents=2, hidden_dim=8))
    ckpt = {"format": "marlctl.checkpoint", "version": 1, "algo": "vdn", "env_id": "hallway",
            "env_spec": {"n_agents": 2}, "env_steps": 10, "agent": make_agent_bundle_entry(net, "q")}
    torch.save(ckpt, tmp_path / "a.pt")
    bundle = load_agent_bundle(tmp_path / "a.pt")
    assert bundle.kind == "q" and bundle.algo == "vdn" and len(bundle.checkpoint_sha256) == 64
    for k, v in net.state_dict().items():
        assert torch.equal(bundle.net.state_dict()[k], v)
    (tmp_path / "b.pt").write_bytes((tmp_path / "a.pt").read_bytes()[:100])
    with pytest.raises(ModelError, match="not a readable marlctl checkpoint"):
        load_agent_bundle(tmp_path / "b.pt")
    torch.save({"format": "something-else"}, tmp_path / "c.pt")
    with pytest.raises(ModelError, match="not a marlctl checkpoint"):
        load_agent_bundle(tmp_path / "c.pt")
    with pytest.raises(ModelError, match="without checkpoints/latest.pt"):
        load_agent_bundle(tmp_path)
    bad = dict(ckpt, agent=dict(ckpt["agent"], config=dict(ckpt["agent"]["config"], hidden_dim=9)))
    torch.save(bad, tmp_path / "d.pt")
    with pytest.raises(ModelError, match="does not load"):
        load_agent_bundle(tmp_path / "d.pt")


# ------------------------------------------------------------------ every algorithm on the real envs

TINY = ["env.num_envs=2", "replay.batch_size=2", "replay.capacity=8", "run.eval_episodes=2", "run.log_interval=100",
        "run.eval_interval=0", "run.save_interval=0", "run.progress=false", "agent.hidden_dim=16",
        "learner.target_update_episodes=2"]
ENVS = ["smax:3m", "grf:academy_empty_goal_close", "predator_prey"]


class _SharedEnv:
    """A real batched env shared by the tests of this module (each new SMAX instance JIT-compiles for ~10 s);
    ``close`` is deferred to the end of the module."""

    def __init__(self, env: Any) -> None:
        self.env, self.spec, self.num_envs = env, env.spec, env.num_envs

    def reset(self, seed: int | None = None) -> Any:
        return self.env.reset(seed=seed)

    def step(self, actions: np.ndarray) -> Any:
        return self.env.step(actions)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def shared_envs() -> Any:
    cache: dict[tuple[str, int], _SharedEnv] = {}
    yield cache
    for shared in cache.values():
        shared.env.close()


@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_trains_a_few_hundred_steps(algo: str, env_id: str, tmp_path: Path, shared_envs: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import marlctl.envs
    from marlctl.trainer.run import train_run

    def make_shared(env_id: str, num_envs: int) -> _SharedEnv:
        if (env_id, num_envs) not in shared_envs:
            shared_envs[env_id, num_envs] = _SharedEnv(make_batched_env(env_id, num_envs))
        return shared_envs[env_id, num_envs]

    monkeypatch.setattr(marlctl.envs, "make_batched_env", make_shared)

    try:
        cfg = load_config(algo, env_id, overrides=TINY, steps=300, seed=0, device="cpu")
        summary = train_run(cfg, tmp_path / "run")
    except BackendUnavailableError as exc:
        pytest.skip(f"{env_id}: {exc}")
    assert summary.env_steps >= 300 and summary.updates >= 1
    assert "eval/return" in summary.last_eval
    bundle = load_agent_bundle(tmp_path / "run")
    assert bundle.algo == algo and bundle.env_id == env_id and bundle.kind == (
        "q" if algorithm_spec(algo).kind == "value" else "actor")
    assert bundle.net.config.n_agents == bundle.env_spec["n_agents"]


def test_plot_aggregates_seeds_on_their_common_steps(tmp_path: Path) -> None:
    from marlctl.trainer.plot import Curve, aggregate, plot_curves, plot_runs

    a = Curve(tmp_path, "vdn", "x", 0, np.array([0, 100, 200]), {"eval/return": np.array([0.0, 1.0, 2.0])})
    b = Curve(tmp_path, "vdn", "x", 1, np.array([0, 200, 300]), {"eval/return": np.array([2.0, 4.0, 9.0])})
    grid, mean, low, high = aggregate([a, b], "eval/return", n_grid=3)
    assert grid.tolist() == [0.0, 100.0, 200.0]  # the overlap of the two runs
    assert mean.tolist() == [1.0, 2.0, 3.0] and (high - mean).tolist() == [1.0, 1.0, 1.0]
    assert np.allclose(low, mean - 1.0)
    with pytest.raises(ConfigValueError, match="expected a .png"):
        plot_runs([tmp_path], tmp_path / "x.jpg")
    for c in (a, b):
        c.values["eval/win_rate"] = c.values["eval/return"] / 10
    drawn = plot_curves([a, b], tmp_path / "x.png", title="t")
    assert drawn.out.read_bytes().startswith(b"\x89PNG") and drawn.lines == [
        "vdn (x, 2 seeds): final return 3, win_rate 0.3"]


def test_running_state_norm_matches_full_data_statistics() -> None:
    from marlctl.trainer.running_stats import RunningMeanStd as RunningNorm

    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, 4, generator=g) * 7 + 20 for n in (5, 1, 30, 12)]
    norm = RunningNorm(4)
    for c in chunks:
        norm.update(c)
    data = torch.cat(chunks).double()
    torch.testing.assert_close(norm.mean, data.mean(0))
    torch.testing.assert_close(norm.var, data.var(0, unbiased=False))
    z = norm(torch.cat(chunks))
    assert z.dtype == torch.float32 and z.mean(0).abs().max() < 1e-4 and (z.std(0, unbiased=False) - 1).abs().max() < 1e-3
