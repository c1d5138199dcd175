"""In-process evaluation: the same episodes as ``marlctl run`` with each agent's ONNX file run by ONNX
Runtime in this process (no network) - for quick checks and as the runner's latency baseline.

Every agent is still decentralized: agent ``i``'s session sees only agent ``i``'s observation and
avail mask and carries its own recurrent state and previous action, exactly as its service does.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from marlctl.envs.base import EnvSpec
from marlctl.serving.errors import ServingError
from marlctl.serving.records import EpisodeRecord, Outcome, save_record
from marlctl.serving.stats import EpisodeSummary


class LocalAgent:
    """One agent's exported policy in this process: ``decide(obs, avail)`` keeps hidden state and previous action."""

    def __init__(self, model_dir: str | Path, index: int) -> None:
        from marlctl.serving.model import load_agent_model

        self.model = load_agent_model(model_dir, index)
        self.index = index
        self.hidden_1H = np.zeros((1, self.model.hidden_dim), dtype=np.float32)
        self.prev_action = -1

    @property
    def obs_dim(self) -> int:
        return self.model.obs_dim

    @property
    def n_actions(self) -> int:
        return self.model.n_actions

    @property
    def env_id(self) -> str:
        return str(self.model.manifest["env_id"])

    @property
    def n_agents(self) -> int:
        return int(self.model.manifest["n_agents"])

    def reset(self) -> None:
        """Start a new episode: zero recurrent state, no previous action."""
        self.hidden_1H = np.zeros_like(self.hidden_1H)
        self.prev_action = -1

    def decide(self, obs_O: np.ndarray, avail_A: np.ndarray) -> tuple[int, np.ndarray]:
        """Greedy available action and its scores ``[A]``; advances the recurrent state."""
        action_B, scores_BA, hidden_BH = self.model.infer(
            np.asarray(obs_O, dtype=np.float32)[None],
            np.array([self.prev_action], dtype=np.int64),
            np.asarray(avail_A, dtype=bool)[None],
            self.hidden_1H,
        )
        self.hidden_1H = hidden_BH
        self.prev_action = int(action_B[0])
        return self.prev_action, scores_BA[0]


def load_team(model_dir: str | Path, spec: EnvSpec) -> list[LocalAgent]:
    """Every agent of a model dir, checked like a runner checks services: dims and env id must fit ``spec``."""
    from marlctl.serving.model import read_manifest
    from marlctl.serving.runner import check_agent_spec

    n_model = read_manifest(model_dir)["n_agents"]
    if n_model != spec.n_agents:
        raise ServingError(f"model dir {model_dir} holds {n_model} agents, env {spec.env_id!r} has {spec.n_agents}")
    agents = []
    for i in range(spec.n_agents):
        agent = LocalAgent(model_dir, i)
        check_agent_spec(i, f"{model_dir}/agent_{i}", _SpecView(i, agent.n_agents, agent), spec)
        agents.append(agent)
    return agents


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one ``marlctl eval``."""

    model_dir: Path
    """Exported model dir (``manifest.json`` + ``agent_<i>.onnx``)."""
    env_id: str | None = None
    """Environment id; None = the env the model was trained on (from the manifest)."""
    episodes: int = 10
    """Number of episodes."""
    seed: int = 0
    """Episode ``i`` resets its env with seed ``seed + i`` (same as ``marlctl run``)."""
    record_dir: Path | None = None
    """Write one record per episode here (None: no records)."""
    record_obs: bool = False
    """Also record observations and avail masks."""


@dataclass
class EvalResult:
    """Every episode's record and the summary."""

    records: list[EpisodeRecord]
    summary: EpisodeSummary
    record_paths: list[Path] = field(default_factory=list)


def manifest_env_id(model_dir: str | Path) -> str:
    """The env id a model dir was exported for (``ServingError`` when the dir has no readable manifest)."""
    import json

    from marlctl.agents.onnx_io import MANIFEST_NAME

    path = Path(model_dir) / MANIFEST_NAME
    try:
        env_id = json.loads(path.read_text())["env_id"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ServingError(f"{model_dir}: not a model dir (cannot read env_id from {path}: {exc}); "
                           "create one with `marlctl export RUN_DIR --out MODEL_DIR`") from None
    if not isinstance(env_id, str):
        raise ServingError(f"{path}: env_id is not a string")
    return env_id


def play_episode(env: Any, spec: EnvSpec, agents: list[LocalAgent], seed: int, index: int, *,
                 record_obs: bool = False, source: dict[str, Any] | None = None) -> EpisodeRecord:
    """One greedy episode with in-process agents; decision latencies are per agent ONNX Runtime calls."""
    n = spec.n_agents
    ts = env.reset(seed)
    for agent in agents:
        agent.reset()
    actions, rewards, latencies, obs_rows, avail_rows = [], [], [], [], []
    for _ in range(spec.episode_limit):
        obs_NO = np.asarray(ts.obs, dtype=np.float32)
        avail_NA = np.asarray(ts.avail, dtype=bool)
        joint_N = np.zeros(n, dtype=np.int64)
        lat_N = np.zeros(n)
        for i, agent in enumerate(agents):
            t0 = time.perf_counter()
            joint_N[i], _ = agent.decide(obs_NO[i], avail_NA[i])
            lat_N[i] = (time.perf_counter() - t0) * 1e3
        if record_obs:
            obs_rows.append(obs_NO)
            avail_rows.append(avail_NA)
        ts = env.step(joint_N)
        actions.append(joint_N)
        rewards.append(float(ts.reward))
        latencies.append(lat_N)
        if ts.done:
            break
    outcome = Outcome(
        episode_return=float(np.sum(rewards)), won=bool(ts.info.get("won", False)),
        score=float(ts.info.get("score", 0.0)), length=len(actions), terminated=bool(ts.terminated),
        truncated=bool(ts.truncated), degraded=False,
    )
    return EpisodeRecord(
        env_id=spec.env_id, env_spec=spec.to_dict(), seed=seed, episode_index=index,
        actions_TN=np.asarray(actions, dtype=np.int64).reshape(-1, n),
        rewards_T=np.asarray(rewards, dtype=np.float64), outcome=outcome,
        latency_ms_TN=np.asarray(latencies, dtype=np.float64).reshape(-1, n),
        source=source or {},
        obs_TNO=np.asarray(obs_rows, dtype=np.float32).reshape(-1, n, spec.obs_dim) if record_obs else None,
        avail_TNA=np.asarray(avail_rows, dtype=bool).reshape(-1, n, spec.n_actions) if record_obs else None,
    )


def evaluate(config: EvalConfig, on_episode: Callable[[EpisodeRecord], None] | None = None) -> EvalResult:
    """Run ``config.episodes`` greedy episodes with in-process ONNX Runtime agents."""
    from marlctl.envs import env_spec, make_env
    from marlctl.serving.runner import summarize_records

    if config.episodes < 1:
        raise ServingError(f"--episodes must be >= 1, got {config.episodes}")
    trained_on = manifest_env_id(config.model_dir)
    env_id = config.env_id or trained_on
    spec = env_spec(env_id)
    agents = load_team(config.model_dir, spec)
    env = make_env(env_id)
    records: list[EpisodeRecord] = []
    paths: list[Path] = []
    t0 = time.perf_counter()
    source = {"kind": "eval", "model_dir": str(config.model_dir),
              "agents": [a.model.sha256 for a in agents]}
    try:
        for index in range(config.episodes):
            record = play_episode(env, spec, agents, config.seed + index, index, record_obs=config.record_obs,
                                  source=source)
            records.append(record)
            if config.record_dir is not None:
                paths.append(save_record(record, config.record_dir))
            if on_episode is not None:
                on_episode(record)
    finally:
        env.close()
    return EvalResult(records, summarize_records(records, time.perf_counter() - t0), paths)


@dataclass(frozen=True)
class _SpecView:
    """A local agent seen through the fields ``check_agent_spec`` reads from a service's ``GetSpec``."""

    agent_index: int
    n_agents: int
    agent: LocalAgent

    @property
    def obs_dim(self) -> int:
        return self.agent.obs_dim

    @property
    def n_actions(self) -> int:
        return self.agent.n_actions

    @property
    def env_id(self) -> str:
        return self.agent.env_id
