"""The agent gRPC service's lifecycle: one process serves one agent's ONNX policy to many concurrent episodes.

Design (DESIGN.md, "Agent service contract"; proto/agent.proto). The parts, one module each:
``config`` (``ServerConfig``), ``episodes`` (the live-episode table, bounded by ``max_episodes``,
and a multiplexed stream's slot arrays), ``rows`` (the one row check before and after inference),
``batcher`` (the micro-batcher: concurrent episodes' decisions as one ONNX Runtime call),
``servicer`` (the four RPCs, raw bytes in and out through ``wire``) and this module:

- ``AgentServer.start`` binds with health NOT_SERVING; ``load_model`` loads, verifies and warms the
  model off the event loop, then SERVING. The message-size limit applies to every RPC of the port.
- Rollout: ``reload`` (SIGHUP, or ``watch_s`` when the manifest changes) verifies the model dir
  exactly like at start; a new version becomes what new episodes get while live episodes finish on
  theirs; a failed verification keeps the old version serving and is logged and counted
  (``marl_agent_rollouts_total{result}``). ``rollback`` returns to the previous version kept in memory.
- SIGTERM/SIGINT: health NOT_SERVING, new episodes get UNAVAILABLE, live episodes may finish within
  ``grace_s``; then the rest are ended with UNAVAILABLE and the server stops.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from marlctl.serving.config import BATCHING_MODES, ServerConfig
from marlctl.serving.errors import AgentServiceError, ServingError
from marlctl.serving.metrics import ServerMetrics, start_metrics_http
from marlctl.serving.model import AgentModel, load_agent_model
from marlctl.serving.rows import RequestError
from marlctl.serving.servicer import (
    EPISODE_ID_RE,
    REQUEST_ID_KEY,
    SERVICE_NAME,
    AgentServicer,
    LiveModel,
    add_to_server,
)

log = logging.getLogger(__name__)

__all__ = ["BATCHING_MODES", "EPISODE_ID_RE", "REQUEST_ID_KEY", "SERVICE_NAME", "AgentServer", "RequestError",
           "ServerConfig", "serve"]


class AgentServer:
    """An agent service: gRPC server + health + reflection + metrics around one agent model."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self.servicer = AgentServicer(config, self.metrics)
        self.health = HealthServicer()
        self.port: int = 0
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_http: Any = None
        self._drain = asyncio.Event()
        self._reaper: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._reload_lock = asyncio.Lock()
        self._serial = 0
        self._previous: AgentModel | None = None
        """The version before the current one, kept loaded for ``rollback``."""
        self._closing: set[asyncio.Task] = set()
        self._rollouts = self.metrics.rollouts_total
        self.servicer.on_unpinned = self._retired

    async def start(self) -> None:
        """Bind and serve with health NOT_SERVING (the model is not loaded yet)."""
        cfg = self.config
        options = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                   ("grpc.max_send_message_length", cfg.max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=options)
        add_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            try:
                creds = grpc.ssl_server_credentials([(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])
            except OSError as exc:
                raise AgentServiceError(f"cannot read TLS files: {exc}") from None
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise AgentServiceError(f"cannot bind {address} (port in use or address not local)")
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._server = server
        if cfg.metrics_port is not None:
            try:
                self._metrics_http = start_metrics_http(self.metrics.registry, cfg.metrics_port, cfg.host)
            except OSError as exc:
                raise AgentServiceError(f"cannot serve metrics on {cfg.host}:{cfg.metrics_port}: {exc}") from None
            self.metrics_port = self._metrics_http.server_port
        log.info("agent %d listening on %s:%d (NOT_SERVING until the model is ready)", cfg.agent_index, cfg.host, self.port)

    async def load_model(self) -> AgentModel:
        """Load, verify and warm the model off the event loop (health answers meanwhile), then SERVING."""
        model = await self._load()
        self._serial = 1
        self._attach(self.servicer.make_live(model, self._serial))
        loop = asyncio.get_running_loop()
        self._reaper = loop.create_task(self._reap_idle(), name="idle-reaper")
        if self.config.watch_s is not None:
            self._watcher = loop.create_task(self._watch(), name="model-watch")
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("agent %d SERVING on port %d (%s), model version %s", self.config.agent_index, self.port,
                 model.provider, model.version)
        return model

    async def _load(self) -> AgentModel:
        return await asyncio.get_running_loop().run_in_executor(
            None, load_agent_model, self.config.model_dir, self.config.agent_index, self.config.model)

    # ---- rollout ------------------------------------------------------------------------------------------
    def _attach(self, lm: LiveModel) -> None:
        """Make ``lm`` the version new episodes get; shown in ``marl_agent_model_info`` while it is live."""
        m = lm.model
        self.metrics.model_info.labels(str(m.index), m.manifest["algorithm"], m.sha256, m.version).set(1)
        old = self.servicer.attach(lm)
        if old is not None:
            self._previous = old.model

    def _retired(self, lm: LiveModel) -> None:
        """A version that is no longer current lost its last episode: drop its metric and batcher."""
        m = lm.model
        still_live = any(o.model.version == m.version and o.model.sha256 == m.sha256
                         for o in self.servicer.models.values())  # a rollback made the same version current again
        if not still_live:
            try:
                self.metrics.model_info.remove(str(m.index), m.manifest["algorithm"], m.sha256, m.version)
            except KeyError:
                pass
        self._closing.add(asyncio.get_running_loop().create_task(lm.batcher.close()))
        log.info("model version %s retired (no live episode left on it)", m.version)

    def _compatible(self, new: AgentModel, cur: AgentModel) -> None:
        for key in ("env_id", "n_agents", "obs_dim", "n_actions", "hidden_dim"):
            if new.manifest[key] != cur.manifest[key]:
                raise AgentServiceError(f"the new model has {key}={new.manifest[key]!r}, the serving one "
                                        f"{cur.manifest[key]!r}: a rollout keeps the agent's interface")

    async def reload(self, why: str = "reload") -> bool:
        """Verify the model dir again and, if it holds another version, make that the one new episodes get;
        True when the version changed. A model that fails verification is refused: the old one keeps serving."""
        async with self._reload_lock:
            cur = self.servicer.current
            if cur is None:
                return False
            try:
                model = await self._load()
                self._compatible(model, cur.model)
            except ServingError as exc:
                self._rollouts.labels(str(self.config.agent_index), "refused").inc()
                log.error("%s: new model refused, version %s keeps serving: %s", why, cur.version, exc)
                self._attempted(f"{why}: {exc}")
                return False
            if model.version == cur.version and model.sha256 == cur.model.sha256:
                log.info("%s: model version %s unchanged", why, cur.version)
                self._attempted("")
                return False
            return self._roll_to(model, why)

    def _attempted(self, refusal: str) -> None:
        self.servicer.rollout_refusal = refusal
        self.servicer.rollout_attempts += 1

    async def rollback(self) -> bool:
        """Return to the previous version kept in memory (False when there is none)."""
        async with self._reload_lock:
            if self._previous is None:
                log.error("rollback: no previous model version in memory")
                self._attempted("rollback: no previous model version in memory")
                return False
            return self._roll_to(self._previous, "rollback")

    def _roll_to(self, model: AgentModel, why: str) -> bool:
        cur = self.servicer.current
        self._serial += 1
        self._attach(self.servicer.make_live(model, self._serial))
        self._rollouts.labels(str(self.config.agent_index), "ok").inc()
        self._attempted("")
        log.info("%s: new episodes get model version %s (was %s; %d live episode(s) finish on it)", why,
                 model.version, cur.version if cur else "-", cur.pins if cur else 0)
        return True

    def _manifest_stamp(self) -> tuple[Any, ...] | None:
        path = Path(self.config.model_dir) / "manifest.json"
        try:
            st = path.stat()
            return (st.st_ino, st.st_mtime_ns, st.st_size, path.resolve())
        except OSError:
            return None

    async def _watch(self) -> None:
        """``--watch``: roll out when the manifest changes (a ConfigMap/volume swap replaces the directory)."""
        assert self.config.watch_s is not None
        stamp = self._manifest_stamp()
        while True:
            await asyncio.sleep(self.config.watch_s)
            now = self._manifest_stamp()
            if now != stamp and now is not None:
                stamp = now
                await self.reload("model dir changed")

    async def _reap_idle(self) -> None:
        period = min(max(self.config.idle_timeout_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            for eid in self.servicer.expire_idle():
                log.info("unary episode %s expired after %.1fs idle", eid, self.config.idle_timeout_s)

    def request_drain(self) -> None:
        self._drain.set()

    async def wait_drain_requested(self) -> None:
        await self._drain.wait()

    async def drain_and_stop(self) -> None:
        """Stop taking episodes, let live ones finish within the grace period, end the rest, stop."""
        self.servicer.draining = True
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        episodes = self.servicer.episodes
        deadline = time.monotonic() + self.config.grace_s
        while len(episodes) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = len(episodes)
        ended = await self.servicer.end_streams()
        if left:
            log.warning("grace period over: ending %d live episode(s) (%d streams)", left, ended)
        await self.stop(grace=1.0)

    async def stop(self, grace: float | None = 0.0) -> None:
        for task in (self._reaper, self._watcher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._reaper = self._watcher = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        batchers = [lm.batcher for lm in self.servicer.models.values()]
        self.servicer.models.clear()
        self.servicer.current = None
        await asyncio.gather(*(b.close() for b in batchers), *self._closing, return_exceptions=True)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http = None


def return_big_buffers_to_the_os(threshold: int = 256 * 1024) -> None:
    """glibc: allocations of ``threshold`` bytes or more are mmapped and unmapped when freed. Without it glibc
    raises its threshold after the first big free, so client-sized messages (up to ``max_message_bytes``) are
    carved from the heap and the RSS they leave stays high. No-op off glibc."""
    import ctypes

    m_mmap_threshold = -3
    try:
        ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, threshold)
    except (OSError, AttributeError):
        pass


async def serve(config: ServerConfig, ready: Callable[[AgentServer], None] | None = None) -> None:
    """Run an agent service until SIGTERM/SIGINT, then drain and exit (``marlctl serve``)."""
    return_big_buffers_to_the_os()
    server = AgentServer(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_drain)
    reloads: set[asyncio.Task] = set()

    def on_signal(make: Callable[[], Any]) -> None:
        task = loop.create_task(make())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_signal, lambda: server.reload("SIGHUP"))
    loop.add_signal_handler(signal.SIGUSR1, on_signal, server.rollback)
    try:
        await server.start()
        await server.load_model()
        if ready is not None:
            ready(server)
        await server.wait_drain_requested()
        log.info("drain requested: no new episodes, %.0fs grace for live ones", config.grace_s)
        await server.drain_and_stop()
    finally:
        await server.stop(grace=0.0)
