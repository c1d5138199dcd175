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
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from marlctl.envs.base import EnvSpec
from marlctl.serving.errors import AgentServiceError, ServingError
from marlctl.serving.links import AgentLink, StreamLink
from marlctl.serving.play import FAILURE_POLICIES, EpisodePlan, fallback_action, outcome_result, play_episode
from marlctl.serving.records import EpisodeRecord, save_record
from marlctl.serving.stats import EpisodeSummary, summarize_records

log = logging.getLogger(__name__)

__all__ = ["FAILURE_POLICIES", "TRANSPORTS", "EpisodeRunner", "RunConfig", "RunResult", "check_agent_spec",
           "fallback_action", "outcome_result"]

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
    pushgateway: str | None = None
    """Prometheus Pushgateway (``http://host:9091``) that gets the runner's final metrics when the run ends (the
    batch-job convention: a short run's /metrics endpoint is gone before Prometheus scrapes it)."""
    push_job: str = "marlctl_run"
    """The ``job`` the metrics are pushed under (a later run of the same job replaces them)."""

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
        if self.pushgateway is not None and not self.pushgateway.startswith(("http://", "https://")):
            raise ServingError(f"--pushgateway {self.pushgateway!r} is not a URL: give http://host:port "
                               "(e.g. http://pushgateway:9091)")
        if not self.push_job or not self.push_job.replace("_", "").replace("-", "").isalnum():
            raise ServingError(f"--push-job {self.push_job!r} must be letters, digits, '_' or '-'")
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
    push_error: str | None = None
    """Why the final metrics could not be pushed to ``--pushgateway`` (None: pushed, or no Pushgateway)."""


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

    def push(self, url: str, job: str) -> str | None:
        """Push every runner metric to the Pushgateway at ``url`` (replacing ``job``'s group); why not, or None."""
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(url, job=job, registry=self.m.registry, timeout=10)
        except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, OSError: the run's results still stand
            return f"pushing the final metrics to {url} failed: {exc}"
        log.info("final runner metrics pushed to %s (job %s)", url, job)
        return None

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
            push_error = None
            if cfg.pushgateway is not None:
                push_error = await asyncio.get_running_loop().run_in_executor(
                    None, self.metrics.push, cfg.pushgateway, cfg.push_job)
        finally:
            await asyncio.gather(*(m.close() for m in self._muxes), return_exceptions=True)
            await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)
            self.metrics.close()
        records = [results[i] for i in sorted(results)]
        return RunResult(records=records, summary=summarize_records(records, wall), agent_specs=specs,
                         record_paths=[paths[i] for i in sorted(paths)], push_error=push_error)

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
        cfg, spec = self.config, self.spec
        loop = asyncio.get_running_loop()
        seed = cfg.seed + index
        links: list[AgentLink]
        if self._muxes:
            from marlctl.serving.multiplex import MuxEpisodeLink

            links = [MuxEpisodeLink(mux) for mux in self._muxes]
        else:
            links = [StreamLink(stub, i, cfg.timeout_ms / 1e3, f"seed{seed}-ep{index}",
                                functools.partial(check_agent_spec, i, f"agent service {cfg.agents[i]}", env=spec))
                     for i, stub in enumerate(stubs)]

        async def run_env(fn: Any, *args: Any) -> Any:
            return await loop.run_in_executor(pool, fn, *args)

        plan = EpisodePlan(on_agent_failure=cfg.on_agent_failure, agent_names=cfg.agents, timeout_ms=cfg.timeout_ms,
                           step_interval_ms=cfg.step_interval_ms, record_obs=cfg.record_obs,
                           source={"kind": "run", "agents": list(cfg.agents), "on_agent_failure": cfg.on_agent_failure,
                                   "timeout_ms": cfg.timeout_ms, "transport": cfg.transport})
        return await play_episode(env, spec, links, seed, index, plan, metrics=self.metrics, run_env=run_env,
                                  rng=np.random.default_rng([cfg.seed, index, 0x5EED]))  # the random fallback's stream
