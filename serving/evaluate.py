"""In-process evaluation: the same episodes as ``marlctl run`` with each agent's ONNX file run by ONNX
Runtime in this process (no network) - for quick checks and as the runner's latency baseline. The
episode loop is the runner's (``serving.play.play_episode``) with in-process links (``links.LocalLink``).

Every agent is still decentralized: agent ``i``'s session sees only agent ``i``'s observation and
avail mask and carries its own recurrent state and previous action, exactly as its service does.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from marlctl.envs.base import EnvSpec
from marlctl.serving.errors import ServingError
from marlctl.serving.records import EpisodeRecord, save_record
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
    from marlctl.proto import agent_pb2
    from marlctl.serving.model import read_manifest
    from marlctl.serving.runner import check_agent_spec

    manifest = read_manifest(model_dir)
    n_model = manifest["n_agents"]
    if n_model != spec.n_agents:
        raise ServingError(f"model dir {model_dir} holds {n_model} agents, env {spec.env_id!r} has {spec.n_agents}")
    agents = []
    for i in range(spec.n_agents):
        agent = LocalAgent(model_dir, i)
        m = agent.model.manifest  # what this agent's service would answer to GetSpec
        check_agent_spec(i, f"{model_dir}/agent_{i}", agent_pb2.AgentSpec(
            agent_index=i, n_agents=m["n_agents"], obs_dim=m["obs_dim"], n_actions=m["n_actions"],
            env_id=m["env_id"]), spec)
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
    """The env id a model dir was exported for (``ModelDirError`` when the dir is not a valid model dir)."""
    from marlctl.serving.modeldir import verify_model_dir

    return str(verify_model_dir(model_dir, agents=[]).manifest["env_id"])


async def _play(env: Any, spec: EnvSpec, agents: list[LocalAgent], config: EvalConfig, source: dict[str, Any],
                on_record: Callable[[EpisodeRecord], None]) -> None:
    from marlctl.serving.links import LocalLink
    from marlctl.serving.play import EpisodePlan, play_episode

    plan = EpisodePlan(record_obs=config.record_obs, source=source)
    for index in range(config.episodes):
        on_record(await play_episode(env, spec, [LocalLink(a) for a in agents], config.seed + index, index, plan))


def evaluate(config: EvalConfig, on_episode: Callable[[EpisodeRecord], None] | None = None) -> EvalResult:
    """Run ``config.episodes`` greedy episodes with in-process ONNX Runtime agents."""
    from marlctl.envs import env_spec, make_env
    from marlctl.serving.stats import summarize_records

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
    def on_record(record: EpisodeRecord) -> None:
        records.append(record)
        if config.record_dir is not None:
            paths.append(save_record(record, config.record_dir))
        if on_episode is not None:
            on_episode(record)

    try:
        asyncio.run(_play(env, spec, agents, config, source, on_record))
    finally:
        env.close()
    return EvalResult(records, summarize_records(records, time.perf_counter() - t0), paths)
