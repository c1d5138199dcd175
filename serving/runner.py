"""The episode runner: drives live episodes whose agents are remote gRPC agent services.

Each episode opens one bidirectional ``Episode`` stream per agent; every step sends each
agent ONLY its own observation and avail mask, all agents concurrently, with a deadline per
decision. ``K`` episodes run at a time on one asyncio event loop. With ``transport="multiplex"``
the episodes share one ``Episodes`` stream per agent instead, and the decisions they ask for at
the same time travel as one message (``serving.multiplex``); everything else is the same.

Environment stepping never runs on the event loop: each of the ``K`` episode slots owns one
worker thread that creates, resets, steps and closes that slot's environment (one thread per
env also suits engines that must stay on the thread that made them, like the football
engine). A jitted SMAX step or a GRF engine step then only blocks its own slot, and the loop
keeps serving the other episodes' streams.

Agent failures (no decision within the deadline, ``UNAVAILABLE``, a broken stream, an
unusable decision) follow ``--on-agent-failure``: ``fail`` aborts the episode (recorded as
aborted, the other episodes go on), ``noop`` applies action 0 when available else the first
available one, ``random`` a uniform available action. Each fallback is counted in
``marl_runner_fallbacks_total{agent,reason}`` and written into the episode record (episode
``degraded``). After a failure the agent's stream is dropped; at the agent's next decision
the runner asks the address for its spec again (it must still be the same agent of the same
env: a different service there is a ``spec_mismatch`` failure) and opens a new stream, so when
the service is back the agent rejoins the running episode with a FRESH recurrent state and no
previous action (the server-side state of the broken stream is gone). The record lists these
reconnects.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from marlctl.envs.base import EnvSpec, TimeStep
from marlctl.envs.errors import EnvError
from marlctl.serving.errors import AgentServiceError, ServingError
from marlctl.serving.records import EpisodeRecord, Fallback, Outcome, save_record
from marlctl.serving.stats import EpisodeSummary, summarize

log = logging.getLogger(__name__)

FAILURE_POLICIES = ("fail", "noop", "random")
TRANSPORTS = ("stream", "multiplex")

# Reconnect quickly after an agent process comes back (gRPC's default backoff grows to 120 s).
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
)
# Options in an env id that change only the reward, not what an agent observes or may do.
REWARD_ONLY_OPTIONS = frozenset({"reward"})


@dataclass(frozen=True)
class RunConfig:
    """Settings of one ``marlctl run``."""

    env_id: str
    """Environment id (any id of ``marlctl.envs.make_env``)."""
    agents: tuple[str, ...]
    """``host:port`` of each agent's service, in agent-index order."""
    episodes: int = 10
    """Number of episodes to run."""
    concurrency: int = 1
    """Episodes in flight at once (each on its own env and worker thread)."""
    seed: int = 0
    """Episode ``i`` resets its env with seed ``seed + i`` (independent of ``concurrency``)."""
    record_dir: Path | None = None
    """Write one record per episode here (None: no records)."""
    record_obs: bool = False
    """Also record each agent's observation and avail mask at every step."""
    timeout_ms: float = 1000.0
    """Deadline of one decision (send observation -> decision received)."""
    on_agent_failure: str = "fail"
    """``fail`` (abort the episode), ``noop`` or ``random`` (see the module docstring)."""
    connect_timeout_s: float = 30.0
    """How long to wait for every agent service to answer ``GetSpec`` before starting."""
    step_interval_ms: float = 0.0
    """Minimum wall time between two steps of an episode (real-time pacing, like a control loop); 0 = none."""
    transport: str = "stream"
    """``stream``: one ``Episode`` stream per episode and agent; ``multiplex``: one ``Episodes`` stream per
    agent carrying all episodes in flight, decisions batched into one message (``serving.multiplex``)."""

    def validate(self) -> None:
        if self.on_agent_failure not in FAILURE_POLICIES:
            raise ServingError(f"--on-agent-failure {self.on_agent_failure!r} is not valid; "
                               f"choose one of {', '.join(FAILURE_POLICIES)}")
        if self.episodes < 1:
            raise ServingError(f"--episodes must be >= 1, got {self.episodes}")
        if self.transport not in TRANSPORTS:
            raise ServingError(f"--transport {self.transport!r} is not valid; choose one of {', '.join(TRANSPORTS)}")
        if self.concurrency < 1:
            raise ServingError(f"--concurrency must be >= 1, got {self.concurrency}")
        if not self.timeout_ms > 0:
            raise ServingError(f"--timeout-ms must be > 0, got {self.timeout_ms}")
        if self.step_interval_ms < 0:
            raise ServingError(f"--step-interval-ms must be >= 0, got {self.step_interval_ms}")
        if not self.agents:
            raise ServingError("--agents is empty: give one host:port per agent, comma-separated")
        for addr in self.agents:
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ServingError(f"agent address {addr!r} is not host:port (e.g. 127.0.0.1:50051)")


@dataclass
class RunResult:
    """What a run produced: every episode's record (aborted ones included) and the summary."""

    records: list[EpisodeRecord]
    summary: EpisodeSummary
    agent_specs: list[dict[str, Any]] = field(default_factory=list)
    """Each agent service's ``GetSpec`` answer, as a dict."""
    record_paths: list[Path] = field(default_factory=list)
    """The record file of each episode, in episode order (empty without ``record_dir``)."""


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


def outcome_result(outcome: Outcome, has_won: bool) -> str:
    """``result`` label of ``marl_runner_episodes_total``: won / lost (envs with a goal) / done / aborted."""
    if outcome.aborted:
        return "aborted"
    if has_won:
        return "won" if outcome.won else "lost"
    return "done"


def check_agent_spec(index: int, address: str, spec: Any, env: EnvSpec) -> None:
    """Refuse an agent (``address`` names it in the error) that is not agent ``index`` of a model for ``env``."""
    from marlctl.envs import parse_env_id

    problems = []
    if spec.agent_index != index:
        problems.append(f"it serves agent {spec.agent_index}, but it is agent {index} in --agents")
    for name, want in (("n_agents", env.n_agents), ("obs_dim", env.obs_dim), ("n_actions", env.n_actions)):
        got = getattr(spec, name)
        if got != want:
            problems.append(f"its model has {name}={got}, the env {env.env_id!r} has {want}")
    if spec.env_id != env.env_id:
        try:
            fam_a, scen_a, opt_a = parse_env_id(spec.env_id)
            fam_b, scen_b, opt_b = parse_env_id(env.env_id)
            keys = (set(opt_a) | set(opt_b)) - REWARD_ONLY_OPTIONS
            same = (fam_a, scen_a) == (fam_b, scen_b) and all(opt_a.get(k) == opt_b.get(k) for k in keys)
        except Exception:  # noqa: BLE001 - an id this marlctl cannot parse is simply "different"
            same = False
        if not same:
            problems.append(f"its model was trained on {spec.env_id!r}, not {env.env_id!r}")
    if problems:
        raise AgentServiceError(f"{address} (agent {index}) does not match: " + "; ".join(problems))


class _AgentLink:
    """One agent's side of one episode: its current stream, reopened after a failure."""

    def __init__(self, stub: Any, index: int, timeout_s: float, label: str, check_spec: Callable[[Any], None]) -> None:
        self.stub = stub
        self.index = index
        self.check_spec = check_spec
        self.timeout_s = timeout_s
        self.label = label
        self.call: Any = None
        self.failed_before = False

    async def _exchange(self, request: Any) -> Any:
        import grpc

        await self.call.write(request)
        reply = await self.call.read()
        if reply is grpc.aio.EOF:
            raise _StreamEnded("the service closed the stream")
        return reply

    async def decide(self, obs_O: np.ndarray, avail_A: np.ndarray) -> tuple[int | None, float, str | None, bool]:
        """``(action or None, latency ms, failure reason or None, reconnected)``.

        The fault boundary of one agent: whatever goes wrong with the remote side becomes a failure
        reason, never an exception that would stop the other agents or episodes."""
        import grpc
        from marlctl.proto import agent_pb2

        reconnecting = self.call is None and self.failed_before
        request = agent_pb2.Observation(obs=obs_O.tolist(), avail_actions=avail_A.tolist(), episode_id=self.label)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):  # no extra task per decision, unlike wait_for
                if reconnecting:  # whoever answers at this address now must still be this agent of this env
                    self.check_spec(await self.stub.GetSpec(agent_pb2.GetSpecRequest(), wait_for_ready=False))
                if self.call is None:
                    self.call = self.stub.Episode(wait_for_ready=False)
                reply = await self._exchange(request)
        except TimeoutError:
            return self._failed("timeout")
        except grpc.aio.AioRpcError as exc:
            return self._failed("unavailable" if exc.code() == grpc.StatusCode.UNAVAILABLE else "stream_error")
        except AgentServiceError as exc:
            log.warning("agent %d: the service back at its address is another one: %s", self.index, exc)
            return self._failed("spec_mismatch")
        except Exception as exc:  # noqa: BLE001 - see the docstring; logged, counted, recorded
            log.warning("agent %d: stream failed: %s: %s", self.index, type(exc).__name__, exc)
            return self._failed("stream_error")
        latency_ms = (time.perf_counter() - t0) * 1e3
        action = int(reply.action)
        if not (0 <= action < avail_A.shape[0] and avail_A[action]):
            return None, math.nan, "invalid_decision", reconnecting
        return action, latency_ms, None, reconnecting

    def _failed(self, reason: str) -> tuple[None, float, str, bool]:
        self.drop()
        self.failed_before = True
        return None, math.nan, reason, False

    def drop(self) -> None:
        if self.call is not None:
            self.call.cancel()
            self.call = None

    async def close(self) -> None:
        """Half-close the stream and drain it (ends the episode on the server), bounded by the deadline."""
        call, self.call = self.call, None
        if call is None:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await call.done_writing()
                await call.code()  # the server's end of the stream
        except Exception:  # noqa: BLE001 - the episode is over; a failing close only loses server-side cleanup
            call.cancel()


class _StreamEnded(ConnectionError):
    """The server ended the stream before answering."""


class _Metrics:
    """The runner metrics of ``serving/metrics.py``, with the env label bound."""

    def __init__(self, env_id: str, port: int | None) -> None:
        from marlctl.serving import metrics

        self.m = metrics.RunnerMetrics()
        self.env_id = env_id
        try:
            self.http = None if port is None else metrics.start_metrics_http(self.m.registry, port)
        except OSError as exc:
            raise ServingError(f"cannot serve runner metrics on --metrics-port {port}: {exc}") from None

    def fallback(self, agent: int, reason: str) -> None:
        self.m.fallbacks_total.labels(agent=str(agent), reason=reason).inc()

    def step(self, seconds: float) -> None:
        self.m.step_seconds.labels(env=self.env_id).observe(seconds)

    def episode(self, result: str, episode_return: float) -> None:
        self.m.episodes_total.labels(env=self.env_id, result=result).inc()
        if result != "aborted":
            self.m.episode_return.labels(env=self.env_id).observe(episode_return)

    def close(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()


class EpisodeRunner:
    """Runs ``RunConfig.episodes`` episodes against the agent services (use ``run()``)."""

    def __init__(self, config: RunConfig, metrics_port: int | None = None,
                 on_episode: Callable[[EpisodeRecord], None] | None = None) -> None:
        config.validate()
        from marlctl.envs import env_spec

        self.config = config
        self.spec: EnvSpec = env_spec(config.env_id)
        if len(config.agents) != self.spec.n_agents:
            raise ServingError(f"env {config.env_id!r} has {self.spec.n_agents} agents but --agents lists "
                               f"{len(config.agents)} address(es); give one host:port per agent, in order")
        self.metrics_port = metrics_port
        self.on_episode = on_episode
        self.metrics: _Metrics | None = None
        self._muxes: list[Any] = []
        self._stop = threading.Event()

    def stop(self) -> None:
        """Start no new episode (thread-safe); episodes in flight finish and are recorded."""
        self._stop.set()

    def run(self) -> RunResult:
        return asyncio.run(self.run_async())

    async def run_async(self) -> RunResult:
        import grpc
        from marlctl.proto import agent_pb2_grpc

        cfg = self.config
        self.metrics = _Metrics(cfg.env_id, self.metrics_port)
        channels = [grpc.aio.insecure_channel(a, options=list(CHANNEL_OPTIONS)) for a in cfg.agents]
        try:
            stubs = [agent_pb2_grpc.AgentServiceStub(ch) for ch in channels]
            specs = await self._check_specs(stubs)
            self._muxes = self._make_muxes(channels, stubs, specs)
            t0 = time.perf_counter()
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(cfg.episodes):
                queue.put_nowait(i)
            results: dict[int, EpisodeRecord] = {}
            paths: dict[int, Path] = {}
            slots = [self._slot(stubs, queue, results, paths) for _ in range(min(cfg.concurrency, cfg.episodes))]
            await asyncio.gather(*slots)
            wall = time.perf_counter() - t0
        finally:
            await asyncio.gather(*(m.close() for m in self._muxes), return_exceptions=True)
            await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)
            self.metrics.close()
        records = [results[i] for i in sorted(results)]
        return RunResult(records=records, summary=summarize_records(records, wall), agent_specs=specs,
                         record_paths=[paths[i] for i in sorted(paths)])

    def _make_muxes(self, channels: list[Any], stubs: list[Any], specs: list[dict[str, Any]]) -> list[Any]:
        """One ``AgentMux`` per agent under ``--transport multiplex`` (none for per-episode streams)."""
        cfg = self.config
        if cfg.transport != "multiplex":
            return []
        from marlctl.serving.multiplex import AgentMux

        muxes = []
        for i, (channel, stub, spec) in enumerate(zip(channels, stubs, specs, strict=True)):
            if spec["max_episodes"] < min(cfg.concurrency, cfg.episodes):
                raise ServingError(f"agent service {cfg.agents[i]} takes at most {spec['max_episodes']} live "
                                   f"episodes, fewer than --concurrency {cfg.concurrency}")
            muxes.append(AgentMux(channel, stub, i, cfg.timeout_ms / 1e3, spec["max_episodes"],
                                  functools.partial(check_agent_spec, i, f"agent service {cfg.agents[i]}", env=self.spec)))
        return muxes

    async def _check_specs(self, stubs: list[Any]) -> list[dict[str, Any]]:
        import grpc
        from marlctl.proto import agent_pb2

        cfg = self.config

        async def one(i: int) -> Any:
            try:
                return await stubs[i].GetSpec(agent_pb2.GetSpecRequest(), wait_for_ready=True,
                                              timeout=cfg.connect_timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise AgentServiceError(
                    f"agent service {cfg.agents[i]} (agent {i}) did not answer GetSpec within "
                    f"{cfg.connect_timeout_s:g}s: {exc.code().name} {exc.details() or ''}".rstrip()
                    + " - is `marlctl serve MODEL_DIR --agent " + str(i) + "` running there?"
                ) from None

        specs = await asyncio.gather(*(one(i) for i in range(len(stubs))))
        for i, spec in enumerate(specs):
            check_agent_spec(i, f"agent service {cfg.agents[i]}", spec, self.spec)
        return [{f.name: getattr(s, f.name) for f in s.DESCRIPTOR.fields} for s in specs]

    async def _slot(self, stubs: list[Any], queue: asyncio.Queue[int], results: dict[int, EpisodeRecord],
                    paths: dict[int, Path]) -> None:
        """One episode slot: a worker thread with its own env, running episodes from the queue."""
        from marlctl.envs import make_env

        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="marlctl-env") as pool:
            env = await loop.run_in_executor(pool, make_env, self.config.env_id)
            try:
                while not self._stop.is_set():
                    try:
                        index = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    record = await self._episode(env, pool, stubs, index)
                    results[index] = record
                    if self.config.record_dir is not None:
                        paths[index] = await loop.run_in_executor(pool, save_record, record, self.config.record_dir)
                    if self.on_episode is not None:
                        self.on_episode(record)
            finally:
                await loop.run_in_executor(pool, env.close)

    async def _episode(self, env: Any, pool: ThreadPoolExecutor, stubs: list[Any], index: int) -> EpisodeRecord:
        cfg, spec, metrics = self.config, self.spec, self.metrics
        assert metrics is not None
        loop = asyncio.get_running_loop()
        seed = cfg.seed + index
        rng = np.random.default_rng([cfg.seed, index, 0x5EED])  # the random fallback policy's own stream
        links: list[Any]
        if self._muxes:
            from marlctl.serving.multiplex import MuxEpisodeLink

            links = [MuxEpisodeLink(mux) for mux in self._muxes]
        else:
            links = [_AgentLink(stub, i, cfg.timeout_ms / 1e3, f"seed{seed}-ep{index}",
                                functools.partial(check_agent_spec, i, f"agent service {cfg.agents[i]}", env=spec))
                     for i, stub in enumerate(stubs)]
        ts: TimeStep = await loop.run_in_executor(pool, env.reset, seed)
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
                if cfg.step_interval_ms > 0:
                    wait = cfg.step_interval_ms / 1e3 - (time.perf_counter() - last_step_at)
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
                    metrics.fallback(i, reason)
                    if cfg.on_agent_failure == "fail":
                        error = (f"agent {i} ({cfg.agents[i]}) failed at step {t}: {reason} "
                                 f"(deadline {cfg.timeout_ms:g} ms); episode aborted (--on-agent-failure fail)")
                        fallbacks.append(Fallback(t, i, reason, -1))  # -1: nothing applied, aborted
                        raise _Abort(error)
                    joint_N[i] = fallback_action(cfg.on_agent_failure, avail_NA[i], rng)
                    fallbacks.append(Fallback(t, i, reason, int(joint_N[i])))
                if cfg.record_obs:
                    obs_rows.append(obs_NO)
                    avail_rows.append(avail_NA)
                try:
                    ts = await loop.run_in_executor(pool, env.step, joint_N)
                except EnvError as exc:  # e.g. an action the env refuses: this episode ends, the others go on
                    error = f"the environment refused step {t} (joint action {joint_N.tolist()}): {exc}"
                    raise _Abort(error) from None
                actions.append(joint_N)
                rewards.append(float(ts.reward))
                latencies.append(lat_N)
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
        metrics.episode(outcome_result(outcome, spec.has_won), outcome.episode_return)
        n, a, o = spec.n_agents, spec.n_actions, spec.obs_dim
        return EpisodeRecord(
            env_id=cfg.env_id,
            env_spec=spec.to_dict(),
            seed=seed,
            episode_index=index,
            actions_TN=np.asarray(actions, dtype=np.int64).reshape(-1, n),
            rewards_T=np.asarray(rewards, dtype=np.float64),
            outcome=outcome,
            latency_ms_TN=np.asarray(latencies, dtype=np.float64).reshape(-1, n),
            fallbacks=fallbacks,
            reconnects=reconnects,
            source={"kind": "run", "agents": list(cfg.agents), "on_agent_failure": cfg.on_agent_failure,
                    "timeout_ms": cfg.timeout_ms, "transport": cfg.transport},
            obs_TNO=np.asarray(obs_rows, dtype=np.float32).reshape(-1, n, o) if cfg.record_obs else None,
            avail_TNA=np.asarray(avail_rows, dtype=bool).reshape(-1, n, a) if cfg.record_obs else None,
        )


class _Abort(Exception):
    """Stops an episode under the ``fail`` policy."""


def summarize_records(records: list[EpisodeRecord], wall_seconds: float = 0.0) -> EpisodeSummary:
    """The run summary over records: finished episodes' outcomes, aborted count, latencies, fallbacks."""
    done = [r for r in records if not r.outcome.aborted]
    n_agents = records[0].n_agents if records else 0
    lat: dict[int, list[float]] = {i: [] for i in range(n_agents)}
    fallbacks: dict[tuple[int, str], int] = {}
    for r in records:
        for i in range(n_agents):
            col = r.latency_ms_TN[:, i]
            lat[i].extend(col[~np.isnan(col)].tolist())
        for f in r.fallbacks:
            fallbacks[(f.agent, f.reason)] = fallbacks.get((f.agent, f.reason), 0) + 1
    return summarize(
        [r.outcome.episode_return for r in done],
        [r.outcome.won for r in done],
        [r.outcome.length for r in done],
        aborted=len(records) - len(done),
        degraded=sum(r.outcome.degraded for r in done),
        latencies_ms=lat,
        fallbacks=fallbacks,
        wall_seconds=wall_seconds,
    )
