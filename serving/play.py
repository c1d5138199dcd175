"""One episode played with one ``AgentLink`` per agent: shared by ``marlctl run`` (remote links) and ``marlctl eval``
(in-process links).

Every step sends each agent only its own observation and avail mask, all agents concurrently; a
failed decision follows the failure policy (``fail`` aborts the episode, ``noop``/``random`` apply
a fallback action, each recorded in the episode record and counted by ``metrics``). Env calls go
through ``run_env`` (the runner: the episode slot's worker thread; eval: a plain call).
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from marlctl.envs.base import EnvSpec, TimeStep
from marlctl.envs.errors import EnvError
from marlctl.serving.errors import ServingError
from marlctl.serving.links import AgentLink
from marlctl.serving.records import EpisodeRecord, Fallback, Outcome

FAILURE_POLICIES = ("fail", "noop", "random")


def fallback_action(policy: str, avail_A: np.ndarray, rng: np.random.Generator) -> int:
    """The action the runner applies for a failed agent under ``noop`` / ``random``."""
    idx = np.flatnonzero(avail_A)
    if idx.size == 0:
        raise ServingError("the environment offers an agent no available action")
    if policy == "noop":
        return 0 if avail_A[0] else int(idx[0])
    if policy == "random":
        return int(rng.choice(idx))
    raise ServingError(f"no fallback action under policy {policy!r}")


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


@dataclass
class EpisodePlan:
    """How an episode is played (``marlctl run``'s settings; ``marlctl eval`` keeps the defaults)."""

    on_agent_failure: str = "fail"
    """``fail``, ``noop`` or ``random`` (module docstring)."""
    agent_names: Sequence[str] = ()
    """How errors name each agent (its address); empty: ``agent i``."""
    timeout_ms: float = math.inf
    """The decision deadline, only for error messages (the links enforce it)."""
    step_interval_ms: float = 0.0
    """Minimum wall time between two steps (real-time pacing); 0 = none."""
    record_obs: bool = False
    source: dict[str, Any] = field(default_factory=dict)
    """The record's ``source`` (who played it)."""


class _Abort(Exception):
    """Stops an episode under the ``fail`` policy."""


async def play_episode(env: Any, spec: EnvSpec, links: Sequence[AgentLink], seed: int, index: int, plan: EpisodePlan,
                       *, rng: np.random.Generator | None = None, metrics: Any = None,
                       run_env: Callable[..., Awaitable[Any]] = _call) -> EpisodeRecord:
    """Reset ``env`` with ``seed``, play to the end (or the episode limit), close the links; the record.
    ``metrics`` (optional): ``fallback(agent, reason)``, ``step(seconds)``, ``episode(result, return)``."""
    rng = rng if rng is not None else np.random.default_rng([seed, index, 0x5EED])
    ts: TimeStep = await run_env(env.reset, seed)
    actions: list[np.ndarray] = []
    rewards: list[float] = []
    latencies: list[np.ndarray] = []
    obs_rows: list[np.ndarray] = []
    avail_rows: list[np.ndarray] = []
    fallbacks: list[Fallback] = []
    reconnects: list[tuple[int, int]] = []
    error: str | None = None
    last_step_at = time.perf_counter()
    try:
        for t in range(spec.episode_limit):
            if plan.step_interval_ms > 0:
                wait = plan.step_interval_ms / 1e3 - (time.perf_counter() - last_step_at)
                if wait > 0:
                    await asyncio.sleep(wait)
            step_t0 = last_step_at = time.perf_counter()
            obs_NO = np.asarray(ts.obs, dtype=np.float32)
            avail_NA = np.asarray(ts.avail, dtype=bool)
            decided = await asyncio.gather(*(link.decide(obs_NO[i], avail_NA[i]) for i, link in enumerate(links)))
            joint_N = np.zeros(spec.n_agents, dtype=np.int64)
            lat_N = np.full(spec.n_agents, math.nan)
            for i, (action, lat_ms, reason, reconnected) in enumerate(decided):
                if reconnected:
                    reconnects.append((t, i))
                if reason is None:
                    joint_N[i], lat_N[i] = action, lat_ms
                    continue
                if metrics is not None:
                    metrics.fallback(i, reason)
                if plan.on_agent_failure == "fail":
                    name = f"agent {i} ({plan.agent_names[i]})" if plan.agent_names else f"agent {i}"
                    error = (f"{name} failed at step {t}: {reason} (deadline {plan.timeout_ms:g} ms); "
                             "episode aborted (--on-agent-failure fail)")
                    fallbacks.append(Fallback(t, i, reason, -1))  # -1: nothing applied, aborted
                    raise _Abort(error)
                joint_N[i] = fallback_action(plan.on_agent_failure, avail_NA[i], rng)
                fallbacks.append(Fallback(t, i, reason, int(joint_N[i])))
            if plan.record_obs:
                obs_rows.append(obs_NO)
                avail_rows.append(avail_NA)
            try:
                ts = await run_env(env.step, joint_N)
            except EnvError as exc:  # e.g. an action the env refuses: this episode ends, the others go on
                error = f"the environment refused step {t} (joint action {joint_N.tolist()}): {exc}"
                raise _Abort(error) from None
            actions.append(joint_N)
            rewards.append(float(ts.reward))
            latencies.append(lat_N)
            if metrics is not None:
                metrics.step(time.perf_counter() - step_t0)
            if ts.done:
                break
    except _Abort:
        pass
    finally:
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
    outcome = Outcome(
        episode_return=float(np.sum(rewards)) if rewards else 0.0,
        won=bool(ts.info.get("won", False)) and error is None,
        score=float(ts.info.get("score", 0.0)),
        length=len(actions),
        terminated=bool(ts.terminated) and error is None,
        truncated=bool(ts.truncated) and error is None,
        degraded=any(f.action >= 0 for f in fallbacks),
        aborted=error is not None,
        error=error,
    )
    if metrics is not None:
        metrics.episode(outcome_result(outcome, spec.has_won), outcome.episode_return)
    n, a, o = spec.n_agents, spec.n_actions, spec.obs_dim
    return EpisodeRecord(
        env_id=spec.env_id,
        env_spec=spec.to_dict(),
        seed=seed,
        episode_index=index,
        actions_TN=np.asarray(actions, dtype=np.int64).reshape(-1, n),
        rewards_T=np.asarray(rewards, dtype=np.float64),
        outcome=outcome,
        latency_ms_TN=np.asarray(latencies, dtype=np.float64).reshape(-1, n),
        fallbacks=fallbacks,
        reconnects=reconnects,
        source=plan.source,
        obs_TNO=np.asarray(obs_rows, dtype=np.float32).reshape(-1, n, o) if plan.record_obs else None,
        avail_TNA=np.asarray(avail_rows, dtype=bool).reshape(-1, n, a) if plan.record_obs else None,
    )


def outcome_result(outcome: Outcome, has_won: bool) -> str:
    """``result`` label of ``marl_runner_episodes_total``: won / lost (envs with a goal) / done / aborted."""
    if outcome.aborted:
        return "aborted"
    if has_won:
        return "won" if outcome.won else "lost"
    return "done"
