"""Replay of recorded episodes: re-simulate from seed + actions, optionally re-decide with the models, render a GIF.

Re-simulation resets a fresh env with the record's seed and applies the recorded joint actions;
it matches when every step's reward, the end of the episode (step and terminated/truncated)
and ``won``/``score`` equal the record (and the observations, when the record has them).

Re-deciding runs each agent's ONNX file in process (``--model``) on the re-simulated
observations, carrying each agent's recurrent state and previous action as its service did:
at a recorded reconnect the agent's state restarts (a new stream). Agreement is counted only
over decisions the agent itself made (fallback decisions are excluded).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from marlctl.agents.files import atomic_path
from marlctl.serving.errors import ServingError
from marlctl.serving.records import EpisodeRecord

REWARD_ATOL = 1e-5


@dataclass
class ReplayResult:
    """The outcome of replaying one record."""

    path: str
    env_id: str
    seed: int
    recorded_return: float
    replayed_return: float
    recorded_length: int
    replayed_length: int
    problems: list[str] = field(default_factory=list)
    """Every difference found between the record and the re-simulation (empty = match)."""
    decisions: int = 0
    """Agent decisions re-decided with ``--model`` (fallback decisions excluded)."""
    agreements: int = 0
    """How many of those equal the recorded action."""
    first_disagreement: tuple[int, int] | None = None
    """``(step, agent)`` of the first re-decided action that differs from the record."""
    frames: int = 0
    """Frames written to the GIF (0 without ``--render``)."""

    @property
    def match(self) -> bool:
        return not self.problems

    @property
    def agreement(self) -> float | None:
        return self.agreements / self.decisions if self.decisions else None


def replay_record(record: EpisodeRecord, path: str = "", agents: list[Any] | None = None,
                  render: bool = False, env: Any = None) -> tuple[ReplayResult, list[np.ndarray]]:
    """Re-simulate ``record`` (and re-decide with ``agents``: ``evaluate.LocalAgent`` per agent); returns
    the result and the rendered frames (empty unless ``render``). ``env``: an env of the record's id to
    reuse (reset with the record's seed; left open), else a fresh one is made and closed."""
    from marlctl.envs import make_env
    from marlctl.envs.errors import EnvError

    own_env = env is None
    env = make_env(record.env_id) if own_env else env
    n = record.n_agents
    if env.spec.n_agents != n:
        if own_env:
            env.close()
        raise ServingError(f"{path}: the record has {n} agents but env {record.env_id!r} now has {env.spec.n_agents}")
    problems: list[str] = []
    frames: list[np.ndarray] = []
    rewards: list[float] = []
    fallback_at = {(f.step, f.agent) for f in record.fallbacks}
    reconnect_at = set(record.reconnects)
    decisions = agreements = 0
    first_dis: tuple[int, int] | None = None
    ended_at: int | None = None
    out = record.outcome
    try:
        ts = env.reset(record.seed)
        if render:
            frames.append(env.render())
        if agents is not None:
            for agent in agents:
                agent.reset()
        for t, joint_N in enumerate(record.actions_TN):
            obs_NO = np.asarray(ts.obs, dtype=np.float32)
            avail_NA = np.asarray(ts.avail, dtype=bool)
            if record.obs_TNO is not None and not np.array_equal(obs_NO, record.obs_TNO[t]):
                problems.append(f"step {t}: observations differ from the recorded ones "
                                f"(max |diff| {np.abs(obs_NO - record.obs_TNO[t]).max():.3g})")
                break
            if agents is not None:
                for i, agent in enumerate(agents):
                    if (t, i) in reconnect_at:
                        agent.reset()  # the runner opened a new stream: the service restarted this agent's state
                    if (t, i) in fallback_at:
                        continue  # the service did not decide this one; its state did not advance either
                    action, _ = agent.decide(obs_NO[i], avail_NA[i])
                    decisions += 1
                    if action == joint_N[i]:
                        agreements += 1
                    elif first_dis is None:
                        first_dis = (t, i)
            if ended_at is not None:
                problems.append(f"the env ended at step {ended_at} but the record goes on to step {len(record.actions_TN)}")
                break
            try:
                ts = env.step(np.asarray(joint_N, dtype=np.int64))
            except EnvError as exc:
                problems.append(f"step {t}: recorded actions {joint_N.tolist()} rejected by the env: {exc}")
                break
            rewards.append(float(ts.reward))
            if render:
                frames.append(env.render())
            if abs(ts.reward - record.rewards_T[t]) > REWARD_ATOL * max(1.0, abs(record.rewards_T[t])):
                problems.append(f"step {t}: reward {ts.reward:.6g}, recorded {record.rewards_T[t]:.6g}")
            if ts.done:
                ended_at = t
        if not problems:
            problems += _compare_end(record, ts, ended_at)
    finally:
        if own_env:
            env.close()
    result = ReplayResult(
        path=path, env_id=record.env_id, seed=record.seed, recorded_return=record.outcome.episode_return,
        replayed_return=float(np.sum(rewards)), recorded_length=out.length, replayed_length=len(rewards),
        problems=problems, decisions=decisions, agreements=agreements, first_disagreement=first_dis,
        frames=len(frames),
    )
    return result, frames


def _compare_end(record: EpisodeRecord, ts: Any, ended_at: int | None) -> list[str]:
    """Differences in how the episode ended."""
    out = record.outcome
    t_last = len(record.actions_TN) - 1
    problems = []
    if out.aborted:
        if ended_at is not None:
            problems.append(f"the record was aborted after {out.length} steps but the env ended at step {ended_at}")
        return problems
    if ended_at is None:
        problems.append(f"the record ended after {out.length} steps but the env goes on")
        return problems
    if ended_at != t_last:  # pragma: no cover - the loop stops at the first mismatch
        problems.append(f"the env ended at step {ended_at}, the record at step {t_last}")
    if (bool(ts.terminated), bool(ts.truncated)) != (out.terminated, out.truncated):
        problems.append(f"end (terminated, truncated) = ({ts.terminated}, {ts.truncated}), recorded "
                        f"({out.terminated}, {out.truncated})")
    won = bool(ts.info.get("won", False))
    if won != out.won:
        problems.append(f"won = {won}, recorded {out.won}")
    score = float(ts.info.get("score", 0.0))
    if abs(score - out.score) > REWARD_ATOL * max(1.0, abs(out.score)):
        problems.append(f"score = {score:.6g}, recorded {out.score:.6g}")
    if abs(float(np.sum(record.rewards_T)) - out.episode_return) > REWARD_ATOL * max(1.0, abs(out.episode_return)):
        problems.append(f"recorded return {out.episode_return:.6g} != the sum of recorded rewards")
    return problems


def write_gif(frames: list[np.ndarray], path: str | Path, fps: float = 8.0) -> Path:
    """Write ``frames`` (uint8 ``[H, W, 3]`` each) as a looping GIF, atomically."""
    import imageio.v2 as imageio

    if not frames:
        raise ServingError("nothing to render: the episode has no frames")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1 or frames[0].ndim != 3 or frames[0].shape[2] != 3:
        raise ServingError(f"env render() frames must all be uint8 [H, W, 3], got shapes {sorted(shapes)}")
    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ServingError(f"--render {path}: the output must be a .gif file")
    with atomic_path(path) as tmp:
        imageio.mimsave(tmp, [np.asarray(f, dtype=np.uint8) for f in frames], format="GIF",
                        duration=1.0 / fps, loop=0)
    return path


def gif_paths(base: str | Path, count: int) -> list[Path]:
    """One GIF path per replayed record: ``base`` itself for one record, ``base_<k>.gif`` for several."""
    base = Path(base)
    if count == 1:
        return [base]
    return [base.with_name(f"{base.stem}_{k}{base.suffix}") for k in range(count)]
