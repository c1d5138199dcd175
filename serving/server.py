"""The agent gRPC service: one process serves one agent's ONNX policy to many concurrent episodes.

Design (DESIGN.md, "Agent service contract"; proto/agent.proto):

- ``grpc.aio`` server with typed async handlers. Each episode's recurrent state and previous
  action live in an ``EpisodeTable`` bounded by ``max_episodes`` (RESOURCE_EXHAUSTED beyond);
  unary episodes expire after ``idle_timeout_s`` without a call.
- Inference: ``MicroBatcher`` collects the decisions that concurrent episodes ask for while the
  event loop is busy and runs them as ONE ONNX Runtime call (rows = episodes). Where that call
  runs is measured, not assumed (``bench/serving.py``; ``batching``):
  ``thread``: in a single worker thread, so the loop never blocks on inference - right for big
  models, but each hand-off costs a thread switch and GIL contention (tens to thousands of us
  on a loaded CPU). ``loop``: on the event loop itself - for a small agent network a whole
  batch takes tens of microseconds, less than one thread hand-off, so this is faster.
  ``auto`` (default) picks ``loop`` when the warm-up measured the largest warm-up batch under
  ``loop_max_us``, else ``thread``; with at most one live episode it decides inline at once
  (nothing to batch with). ``off``: every decision inline, no batching (the baseline).
  Measured (bench/results/serving.md, 2 shared cores): at 16-256 concurrent streams batching
  costs ~85-120 us of server CPU per decision against ~170-220 us without; ``loop`` and
  ``thread`` are within noise of each other for a 77-input GRU agent. The rest is gRPC's own
  per-message work (read + write, ~35-75 us), which is why the stream's Observation/Decision
  bytes are (de)coded by ``serving.wire`` with NumPy instead of per-element protobuf access.
- ``Episodes`` (the multiplexed stream, ``marlctl run --transport multiplex``): one stream carries
  many episodes; each message is one batch of rows keyed by slot, their state lives in the stream's
  ``SlotState`` arrays and the whole message is decided in one ONNX Runtime call
  (``MicroBatcher.decide_rows``). Bad rows get their own status code in the reply; a message that
  is not readable as rows ends only its stream. Slots count against ``max_episodes``.
- Every request is validated before it reaches a batch (lengths, NaN/Inf, all-false mask), so
  a batch holds only valid rows; a bad request fails only its own call/stream, and is logged.
- Health (``grpc.health.v1``) is NOT_SERVING until the model is loaded, verified and warmed;
  server reflection lists the services. SIGTERM/SIGINT: health NOT_SERVING, new episodes get
  UNAVAILABLE, live episodes may finish within ``grace_s``; then the rest are ended with
  UNAVAILABLE and the server stops.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import signal
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from marlctl.agents.onnx_io import marlctl_version
from marlctl.proto import agent_pb2, agent_pb2_grpc
from marlctl.serving import wire
from marlctl.serving.errors import AgentServiceError
from marlctl.serving.metrics import ServerMetrics, observe_many, start_metrics_http
from marlctl.serving.model import AgentModel, ModelConfig, load_agent_model

log = logging.getLogger(__name__)

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
EPISODE_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID_KEY = "x-request-id"
BATCHING_MODES = ("auto", "loop", "thread", "off")
_CODES = {code.value[0]: code for code in grpc.StatusCode}
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one agent service (``marlctl serve`` builds it from its options)."""

    model_dir: Path
    """Model dir written by ``marlctl export`` (manifest.json + agent_<i>.onnx)."""
    agent_index: int
    """Which agent of the team this service runs."""
    host: str = "0.0.0.0"
    port: int = 50051
    """gRPC port (0 = pick a free one; see ``AgentServer.port``)."""
    metrics_port: int | None = None
    """Prometheus HTTP port (None = no exporter; 0 = a free one)."""
    max_episodes: int = 1024
    """Bound on live episodes (streams + unary); more get RESOURCE_EXHAUSTED."""
    idle_timeout_s: float = 60.0
    """A unary episode without a call for this long is dropped."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest gRPC message accepted or sent."""
    tls_cert: Path | None = None
    """PEM certificate chain; with ``tls_key`` the port serves TLS only."""
    tls_key: Path | None = None
    grace_s: float = 30.0
    """On SIGTERM, how long live episodes may go on (match the pod's terminationGracePeriodSeconds)."""
    batching: str = "auto"
    """``auto`` | ``loop`` | ``thread`` | ``off`` (see the module docstring)."""
    max_batch: int = 256
    """Most decisions in one ONNX Runtime call."""
    batch_window_us: int = 0
    """Extra wait for more requests before a batch (0: take what is queued; load batches by itself)."""
    loop_max_us: float = 250.0
    """``auto`` batches on the event loop when the warm-up's largest batch ran faster than this."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Device and ONNX Runtime thread settings."""

    def __post_init__(self) -> None:
        if self.batching not in BATCHING_MODES:
            raise AgentServiceError(f"batching {self.batching!r} not valid: choose {', '.join(BATCHING_MODES)}")
        if self.max_episodes < 1 or self.max_batch < 1 or self.batch_window_us < 0:
            raise AgentServiceError("max_episodes and max_batch must be >= 1, batch_window_us >= 0")
        if self.idle_timeout_s <= 0 or self.grace_s < 0:
            raise AgentServiceError("idle_timeout_s must be > 0 and grace_s >= 0")
        if self.max_message_bytes < 1024:
            raise AgentServiceError(f"max_message_bytes {self.max_message_bytes} too small (>= 1024)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise AgentServiceError("TLS needs both --tls-cert and --tls-key")


class RequestError(Exception):
    """A request the server refuses: carries the gRPC status code and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Episode:
    """Server-side state of one live episode."""

    episode_id: str
    unary: bool
    hidden_1H: np.ndarray  # [1, H]
    prev_action: int = -1
    step: int = 0
    last_seen: float = 0.0
    busy: bool = False
    """A unary decision of this episode is in flight (unary calls of one episode must be sequential)."""


class EpisodeTable:
    """Live episodes, bounded; remembers recently finished ids for clear errors."""

    def __init__(self, max_episodes: int, hidden_dim: int, on_change: Callable[[int], None]) -> None:
        self.max_episodes = max_episodes
        self.hidden_dim = hidden_dim
        self._live: dict[str, Episode] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._on_change = on_change
        self._slots = 0
        """Live episodes of ``Episodes`` streams (their state lives in each stream's ``SlotState``)."""

    def __len__(self) -> int:
        return len(self._live) + self._slots

    def free(self) -> int:
        """How many more episodes may start."""
        return self.max_episodes - len(self)

    def add_slots(self, n: int) -> None:
        if n:
            self._slots += n
            self._on_change(len(self))

    def remove_slots(self, n: int) -> None:
        if n:
            self._slots -= n
            self._on_change(len(self))

    def open(self, episode_id: str, unary: bool) -> Episode:
        if episode_id in self._live:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"episode {episode_id!r} is already live")
        if len(self) >= self.max_episodes:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"live-episode bound reached ({self.max_episodes}); end episodes or retry later")
        ep = Episode(episode_id, unary, np.zeros((1, self.hidden_dim), np.float32), last_seen=time.monotonic())
        self._live[episode_id] = ep
        self._finished.pop(episode_id, None)
        self._on_change(len(self))
        return ep

    def get(self, episode_id: str) -> Episode:
        ep = self._live.get(episode_id)
        if ep is None:
            why = "already ended or expired" if episode_id in self._finished else "unknown (start it with start=true)"
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"episode {episode_id!r} is {why}")
        return ep

    def close(self, episode_id: str) -> None:
        if self._live.pop(episode_id, None) is not None:
            self._finished[episode_id] = None
            while len(self._finished) > 4096:
                self._finished.popitem(last=False)
            self._on_change(len(self))

    def expire_idle(self, idle_timeout_s: float) -> list[str]:
        now = time.monotonic()
        stale = [k for k, ep in self._live.items() if ep.unary and not ep.busy and now - ep.last_seen > idle_timeout_s]
        for k in stale:
            self.close(k)
        return stale


class SlotState:
    """The live episodes of one ``Episodes`` stream, as arrays indexed by slot (grown on demand)."""

    def __init__(self, hidden_dim: int) -> None:
        self.hidden_SH = np.zeros((0, hidden_dim), np.float32)
        self.prev_S = np.zeros(0, np.int64)
        self.step_S = np.zeros(0, np.uint32)
        self.live_S = np.zeros(0, bool)

    def ensure(self, n: int) -> None:
        """Room for slots ``0..n-1``."""
        have = self.live_S.shape[0]
        if n <= have:
            return
        size = max(n, 2 * have, 16)
        self.hidden_SH = np.concatenate([self.hidden_SH, np.zeros((size - have, self.hidden_SH.shape[1]), np.float32)])
        self.prev_S = np.concatenate([self.prev_S, np.full(size - have, -1, np.int64)])
        self.step_S = np.concatenate([self.step_S, np.zeros(size - have, np.uint32)])
        self.live_S = np.concatenate([self.live_S, np.zeros(size - have, bool)])

    def live_count(self) -> int:
        return int(self.live_S.sum())


@dataclass
class _Pending:
    obs_O: np.ndarray
    prev_action: int
    avail_A: np.ndarray
    hidden_1H: np.ndarray
    future: asyncio.Future


DecisionOut = tuple[int, np.ndarray, np.ndarray, int, int]
"""(action, scores [A], hidden [1, H], inference_ns, batch_size)."""


class MicroBatcher:
    """Runs the decisions of concurrent episodes as batched ONNX Runtime calls (see the module docstring)."""

    def __init__(self, model: AgentModel, config: ServerConfig, metrics: ServerMetrics,
                 live_episodes: Callable[[], int]) -> None:
        self.model = model
        self.config = config
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._running = False
        self._live_episodes = live_episodes
        self._inference = metrics.inference_seconds.labels(str(model.index))
        mode = config.batching
        if mode == "auto":
            largest = max(model.infer_seconds) if model.infer_seconds else 1
            mode = "loop" if model.infer_seconds.get(largest, 1.0) * 1e6 < config.loop_max_us else "thread"
        self.mode = mode
        """The resolved mode: ``loop``, ``thread`` or ``off``."""
        self._auto = config.batching == "auto"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort") if mode == "thread" else None
        self._task: asyncio.Task | None = None
        log.info("batching: %s (configured %s)", self.mode, config.batching)

    def start(self) -> None:
        if self.mode != "off":
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    async def decide(self, obs_O: np.ndarray, prev_action: int, avail_A: np.ndarray, hidden_1H: np.ndarray
                     ) -> DecisionOut:
        if self.mode == "off" or (self._auto and self._live_episodes() <= 1 and not self._pending and not self._running):
            action_B, scores_BA, hidden_BH, dt = await self.decide_rows(
                obs_O[None], np.array([prev_action], np.int64), avail_A[None], hidden_1H, inline=True)
            return int(action_B[0]), scores_BA[0], hidden_BH, dt, 1
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(obs_O, prev_action, avail_A, hidden_1H, fut))
        self._wake.set()
        return await fut

    async def decide_rows(self, obs_BO: np.ndarray, prev_B: np.ndarray, avail_BA: np.ndarray, hidden_BH: np.ndarray,
                          inline: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """The one place that runs ONNX Runtime: ``(action [B], scores [B, A], hidden [B, H], inference_ns)`` in
        calls of at most ``max_batch`` rows, on the inference thread in ``thread`` mode (unless ``inline``), else on
        the loop. A failing call raises ``RequestError(INTERNAL)`` for the rows it held; the server goes on."""
        t0 = time.perf_counter_ns()
        try:
            if obs_BO.shape[0] <= self.config.max_batch:
                out = await self._infer(obs_BO, prev_B, avail_BA, hidden_BH, inline)
            else:
                step = self.config.max_batch
                parts = [await self._infer(obs_BO[lo: lo + step], prev_B[lo: lo + step], avail_BA[lo: lo + step],
                                           hidden_BH[lo: lo + step], inline) for lo in range(0, obs_BO.shape[0], step)]
                out = tuple(np.concatenate(x) for x in zip(*parts, strict=True))
        except Exception as exc:  # noqa: BLE001 - fail these rows' requests, keep serving
            log.exception("inference failed for a batch of %d", obs_BO.shape[0])
            raise RequestError(grpc.StatusCode.INTERNAL, f"inference failed: {exc}") from None
        dt = time.perf_counter_ns() - t0
        self._inference.observe(dt * 1e-9)
        return (*out, dt)

    async def _infer(self, *inputs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One ONNX Runtime call: on the inference thread in ``thread`` mode unless inline (last argument)."""
        *arrays, inline = inputs
        if self._pool is not None and not inline:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.model.infer, *arrays)
        return self.model.infer(*arrays)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.config.batch_window_us and len(self._pending) < self.config.max_batch:
                await asyncio.sleep(self.config.batch_window_us * 1e-6)
            batch = [p for p in self._pending[: self.config.max_batch] if not p.future.done()]
            del self._pending[: self.config.max_batch]
            if self._pending:
                self._wake.set()
            if not batch:
                continue
            obs_BO = np.stack([p.obs_O for p in batch])
            prev_B = np.fromiter((p.prev_action for p in batch), np.int64, len(batch))
            avail_BA = np.stack([p.avail_A for p in batch])
            hidden_BH = np.concatenate([p.hidden_1H for p in batch])
            self._running = True
            try:
                action_B, scores_BA, hidden_out_BH, dt = await self.decide_rows(obs_BO, prev_B, avail_BA, hidden_BH)
            except RequestError as err:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(RequestError(err.code, str(err)))
                continue
            finally:
                self._running = False
            for i, p in enumerate(batch):
                if not p.future.done():
                    p.future.set_result((int(action_B[i]), scores_BA[i], hidden_out_BH[i: i + 1], dt, len(batch)))


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """``marlctl.agent.v1.AgentService`` over one loaded agent model."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.model: AgentModel | None = None
        self.batcher: MicroBatcher | None = None
        self.episodes: EpisodeTable | None = None
        self.draining = False
        self._agent = str(config.agent_index)
        self._live_gauge = metrics.live_episodes.labels(self._agent)
        self._decision_hist = metrics.decision_seconds.labels(self._agent)
        self._ok_counter: Any = None
        self._stream_tasks: set[asyncio.Task] = set()

    # ---- lifecycle -------------------------------------------------------------------------
    def attach(self, model: AgentModel) -> None:
        self.model = model
        self.episodes = EpisodeTable(self.config.max_episodes, model.hidden_dim, self._live_gauge.set)
        self.batcher = MicroBatcher(model, self.config, self.metrics, self.episodes.__len__)
        self.batcher.start()
        self._ok_counter = self._counter(grpc.StatusCode.OK)
        self.metrics.model_info.labels(self._agent, model.manifest["algorithm"], model.sha256).set(1)

    def _counter(self, code: grpc.StatusCode) -> Any:
        model = self.model.sha256[:12] if self.model else "none"
        return self.metrics.decisions_total.labels(self._agent, model, code.name)

    def _ready(self) -> tuple[AgentModel, EpisodeTable, MicroBatcher]:
        if self.model is None or self.episodes is None or self.batcher is None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "model still loading; wait for health SERVING")
        return self.model, self.episodes, self.batcher

    # ---- request handling --------------------------------------------------------------------
    @staticmethod
    def _validate(model: AgentModel, obs_O: np.ndarray, avail_A: np.ndarray) -> None:
        if obs_O.shape[0] != model.obs_dim:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"obs has {obs_O.shape[0]} values, expected obs_dim={model.obs_dim}")
        if avail_A.shape[0] != model.n_actions:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"avail_actions has {avail_A.shape[0]} values, expected n_actions={model.n_actions}")
        if not np.isfinite(obs_O).all():
            bad = np.flatnonzero(~np.isfinite(obs_O))
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"obs has NaN/Inf at index {bad[:5].tolist()}; observations must be finite")
        if not avail_A.any():
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "avail_actions is all false: at least one action must be available")

    async def _decide(self, ep: Episode, obs_O: np.ndarray, avail_A: np.ndarray, t0: int
                      ) -> tuple[int, np.ndarray, int, int, int, int]:
        """Validate, decide, advance the episode; ``(action, scores [A], step, decision_ns, inference_ns, batch)``."""
        model, _, batcher = self._ready()
        self._validate(model, obs_O, avail_A)
        action, scores_A, hidden_1H, inf_ns, batch = await batcher.decide(obs_O, ep.prev_action, avail_A, ep.hidden_1H)
        ep.hidden_1H, ep.prev_action = hidden_1H, action
        step = ep.step
        ep.step += 1
        dt = time.perf_counter_ns() - t0
        self._decision_hist.observe(dt * 1e-9)
        self._ok_counter.inc()
        return action, scores_A, step, dt, inf_ns, batch

    async def _refuse(self, context: grpc.aio.ServicerContext, err: RequestError, episode_id: str) -> None:
        self._counter(err.code).inc()
        log.warning("request %s episode %s refused: %s %s", request_id_var.get(), episode_id, err.code.name, err)
        await context.abort(err.code, str(err))

    async def Episode(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        """One episode per stream. Registered with raw-bytes (de)serializers (``add_to_server``): the
        packed fields are read/written with NumPy by ``serving.wire``; context.read()/write() rather than
        an async generator saves one layer per message."""
        episode_id = f"stream-{uuid.uuid4().hex[:12]}"
        try:
            if self.draining:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is draining (shutting down); use another replica")
            _, episodes, _ = self._ready()
            ep = episodes.open(episode_id, unary=False)
        except RequestError as err:
            await self._refuse(context, err, episode_id)
            return
        async with self._stream_lifetime(context, "episode"):
            try:
                while (raw := await context.read()) is not grpc.aio.EOF:
                    t0 = time.perf_counter_ns()
                    try:
                        obs_O, avail_A, client_eid = wire.decode_observation(raw)
                    except ValueError as exc:
                        await self._refuse(context, RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)),
                                           episode_id)
                        return
                    if client_eid and ep.step == 0:
                        log.debug("stream %s is client episode %s", episode_id, client_eid)
                    try:
                        await context.write(wire.encode_decision(*await self._decide(ep, obs_O, avail_A, t0)))
                    except RequestError as err:
                        await self._refuse(context, err, client_eid or episode_id)
                        return
            finally:
                episodes.close(episode_id)

    @contextlib.asynccontextmanager
    async def _stream_lifetime(self, context: grpc.aio.ServicerContext, what: str) -> AsyncIterator[None]:
        """A stream handler's body: listed for ``end_streams``; cancelled by the drain after the grace period,
        it ends with UNAVAILABLE and says why."""
        task = asyncio.current_task()
        if task is not None:
            self._stream_tasks.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if not self.draining:
                raise
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details(f"server shut down; {what} ended after the drain grace period")
        finally:
            if task is not None:
                self._stream_tasks.discard(task)

    async def Episodes(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        """Many episodes on one stream (``ObservationBatch`` in, ``DecisionBatch`` out): per-slot state in a
        ``SlotState``, every message decided as one batch, bad rows refused row by row (module docstring)."""
        stream_id = f"episodes-{uuid.uuid4().hex[:12]}"
        try:
            if self.draining:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is draining (shutting down); use another replica")
            model, episodes, _ = self._ready()
        except RequestError as err:
            await self._refuse(context, err, stream_id)
            return
        state = SlotState(model.hidden_dim)
        async with self._stream_lifetime(context, "episodes"):
            try:
                while (raw := await context.read()) is not grpc.aio.EOF:
                    t0 = time.perf_counter_ns()
                    try:
                        rows = wire.decode_observation_batch(raw)
                        self._check_rows(model, rows)
                        reply = await self._decide_rows(model, episodes, state, rows, t0)
                    except ValueError as exc:
                        await self._refuse(context, RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)),
                                           stream_id)
                        return
                    except RequestError as err:
                        await self._refuse(context, err, stream_id)
                        return
                    await context.write(reply)
            finally:
                episodes.remove_slots(state.live_count())

    def _check_rows(self, model: AgentModel, rows: wire.ObservationRows) -> None:
        """A message that cannot be read as rows ends the stream (INVALID_ARGUMENT); row-level problems don't."""
        R, bound = rows.slots.shape[0], self.config.max_episodes
        problems = []
        if rows.start.shape[0] != R:
            problems.append(f"start has {rows.start.shape[0]} values for {R} slots")
        if rows.obs.shape[0] != R * model.obs_dim:
            problems.append(f"obs has {rows.obs.shape[0]} values, expected {R} rows x obs_dim={model.obs_dim}")
        if rows.avail.shape[0] != R * model.n_actions:
            problems.append(f"avail_actions has {rows.avail.shape[0]} values, expected {R} rows x "
                            f"n_actions={model.n_actions}")
        if R and (int(rows.slots.max()) >= bound or np.unique(rows.slots).shape[0] != R):
            problems.append(f"slots must be distinct and < max_episodes={bound}")
        if rows.end.shape[0] and int(rows.end.max()) >= bound:
            problems.append(f"end slots must be < max_episodes={bound}")
        if problems:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "malformed ObservationBatch: " + "; ".join(problems))

    async def _decide_rows(self, model: AgentModel, episodes: EpisodeTable, state: SlotState,
                           rows: wire.ObservationRows, t0: int) -> bytes:
        """Release ended slots, refuse bad rows (their own code), decide the rest as one batch; the reply bytes."""
        C = grpc.StatusCode
        R, A = rows.slots.shape[0], model.n_actions
        if rows.end.shape[0]:
            state.ensure(int(rows.end.max()) + 1)
            ended = np.unique(rows.end)
            episodes.remove_slots(int(state.live_S[ended].sum()))
            state.live_S[ended] = False
        slots_R, start_R = rows.slots.astype(np.int64), rows.start
        obs_RO, avail_RA = rows.obs.reshape(R, model.obs_dim), rows.avail.reshape(R, A)
        state.ensure(int(slots_R.max()) + 1 if R else 0)
        live_R = state.live_S[slots_R]
        new_R = start_R & ~live_R
        code_R = np.zeros(R, np.uint32)
        reasons: list[str] = []
        all_ok = bool((np.isfinite(obs_RO).all(1) & avail_RA.any(1) & (start_R | live_R)).all()) and \
            not (self.draining and start_R.any()) and int(new_R.sum()) <= episodes.free()
        if not all_ok:  # refuse row by row; the first reason of each kind goes back in the reply
            def refuse(mask_R: np.ndarray, code: grpc.StatusCode, why: str) -> None:
                mask_R = mask_R & (code_R == 0)
                if mask_R.any():
                    code_R[mask_R] = code.value[0]
                    reasons.append(f"slot {int(slots_R[np.argmax(mask_R)])}: {why}")

            refuse(~np.isfinite(obs_RO).all(1), C.INVALID_ARGUMENT, "obs has NaN/Inf; observations must be finite")
            refuse(~avail_RA.any(1), C.INVALID_ARGUMENT,
                   "avail_actions is all false: at least one action must be available")
            refuse(~start_R & ~live_R, C.FAILED_PRECONDITION, "no live episode in this slot (begin one with start=true)")
            if self.draining:
                refuse(start_R, C.UNAVAILABLE, "server is draining: no new episodes; use another replica")
            new_R = new_R & (code_R == 0)
            over = int(new_R.sum()) - episodes.free()
            if over > 0:
                refuse(new_R & (np.cumsum(new_R) > int(new_R.sum()) - over), C.RESOURCE_EXHAUSTED,
                       f"live-episode bound reached ({episodes.max_episodes}); end episodes or retry later")
        ok = np.arange(R) if all_ok else np.flatnonzero(code_R == 0)
        action_R = np.full(R, -1, np.int32)
        scores_RA = np.full((R, A), np.nan, np.float32)
        step_R = np.zeros(R, np.uint32)
        inf_ns = 0
        if ok.size:
            sl, fresh = slots_R[ok], start_R[ok]
            episodes.add_slots(int(new_R[ok].sum()))
            hidden_BH, prev_B, step_B = state.hidden_SH[sl], state.prev_S[sl], state.step_S[sl]
            if fresh.any():
                hidden_BH[fresh], prev_B[fresh], step_B[fresh] = 0.0, -1, 0  # fancy indexing gave copies
            action_B, scores_BA, hidden_out_BH, inf_ns = await self.batcher.decide_rows(  # type: ignore[union-attr]
                obs_RO[ok] if not all_ok else obs_RO, prev_B, avail_RA[ok] if not all_ok else avail_RA, hidden_BH)
            state.hidden_SH[sl], state.prev_S[sl], state.step_S[sl] = hidden_out_BH, action_B, step_B + 1
            state.live_S[sl] = True
            if all_ok:
                action_R, scores_RA, step_R = action_B.astype(np.int32), scores_BA, step_B
            else:
                action_R[ok], scores_RA[ok], step_R[ok] = action_B, scores_BA, step_B
        dt = time.perf_counter_ns() - t0
        observe_many(self._decision_hist, dt * 1e-9, ok.size)
        if ok.size:
            self._ok_counter.inc(ok.size)
        error = ""
        if reasons:
            for code in np.unique(code_R[code_R != 0]):
                self._counter(_CODES[int(code)]).inc(int((code_R == code).sum()))
            error = "; ".join(reasons)
            log.warning("request %s: %d of %d rows refused: %s", request_id_var.get(), R - ok.size, R, error)
        return wire.encode_decision_batch(action_R, scores_RA, code_R, step_R, error, dt, inf_ns, int(ok.size))

    async def Decide(self, request: agent_pb2.DecideRequest, context: grpc.aio.ServicerContext) -> agent_pb2.Decision:
        t0 = time.perf_counter_ns()
        eid = request.episode_id
        try:
            _, episodes, _ = self._ready()
            if not EPISODE_ID_RE.match(eid):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"episode_id {eid[:40]!r} invalid: 1..128 chars of [A-Za-z0-9._:-]")
            if request.start:
                if self.draining:
                    raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is draining (shutting down); use another replica")
                if not request.HasField("observation"):
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "start=true needs an observation")
                ep = episodes.open(eid, unary=True)
            else:
                ep = episodes.get(eid)
            if not request.HasField("observation"):
                if not request.end:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       "observation missing (only end=true may omit it, to release the episode)")
                episodes.close(eid)
                return agent_pb2.Decision(action=-1, step=ep.step)
            if ep.busy:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"episode {eid!r} has a decision in flight; unary calls of one episode must be sequential")
            ep.busy = True
            try:
                obs = request.observation
                action, scores_A, step, dt, inf_ns, batch = await self._decide(
                    ep, np.array(obs.obs, np.float32), np.array(obs.avail_actions, bool), t0)
                decision = agent_pb2.Decision(
                    action=action, scores=scores_A.tolist(), step=step,
                    timing=agent_pb2.ServerTiming(decision_ns=dt, inference_ns=inf_ns, batch_size=batch))
            except RequestError:
                if request.start:
                    episodes.close(eid)  # a refused first step leaves nothing behind
                raise
            finally:
                ep.busy = False
                ep.last_seen = time.monotonic()
            if request.end:
                episodes.close(eid)
            return decision
        except RequestError as err:
            await self._refuse(context, err, eid)
            raise AssertionError("unreachable: abort raises") from None

    async def GetSpec(self, request: agent_pb2.GetSpecRequest, context: grpc.aio.ServicerContext) -> agent_pb2.AgentSpec:
        try:
            model, _, _ = self._ready()
        except RequestError as err:
            await context.abort(err.code, str(err))
            raise AssertionError("unreachable: abort raises") from None
        m = model.manifest
        return agent_pb2.AgentSpec(
            agent_index=model.index, n_agents=m["n_agents"], obs_dim=m["obs_dim"], n_actions=m["n_actions"],
            hidden_dim=m["hidden_dim"], algorithm=m["algorithm"], kind=m["kind"], env_id=m["env_id"],
            model_sha256=model.sha256, manifest_version=m["version"], server_version=marlctl_version(),
            env_steps=m["env_steps"], max_episodes=self.config.max_episodes, execution_provider=model.provider)

    async def end_streams(self) -> int:
        """Cancel the live streams (after the grace period); each ends with UNAVAILABLE."""
        tasks = list(self._stream_tasks)
        for t in tasks:
            t.cancel()
        return len(tasks)


def add_to_server(servicer: AgentServicer, server: grpc.aio.Server) -> None:
    """Register the service like the generated ``add_AgentServiceServicer_to_server``, except that
    ``Episode`` and ``Episodes`` exchange raw bytes (decoded/encoded by ``serving.wire``)."""
    handlers = {
        "Episode": grpc.stream_stream_rpc_method_handler(servicer.Episode),
        "Episodes": grpc.stream_stream_rpc_method_handler(servicer.Episodes),
        "Decide": grpc.unary_unary_rpc_method_handler(
            servicer.Decide, request_deserializer=agent_pb2.DecideRequest.FromString,
            response_serializer=agent_pb2.Decision.SerializeToString),
        "GetSpec": grpc.unary_unary_rpc_method_handler(
            servicer.GetSpec, request_deserializer=agent_pb2.GetSpecRequest.FromString,
            response_serializer=agent_pb2.AgentSpec.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Gives every RPC a request id (the client's ``x-request-id`` metadata or a new one), used in the
    server's log lines and returned to the client in trailing metadata, so a client error can be found
    in the server log. Per-decision metrics are recorded in the servicer instead: an RPC-level
    interceptor does not see the individual decisions of a stream."""

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        rid = next((v for k, v in handler_call_details.invocation_metadata or () if k == REQUEST_ID_KEY), None)
        rid = rid if isinstance(rid, str) and 0 < len(rid) <= 128 else uuid.uuid4().hex[:16]
        request_id_var.set(rid)
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming != handler.response_streaming:
            return handler
        if handler.request_streaming:  # stream-stream: Episode (a coroutine using read/write) or reflection
            inner, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
        else:
            inner, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler
        if not asyncio.iscoroutinefunction(inner):
            return handler  # async-generator handlers (reflection) are left as they are

        async def with_request_id(request: Any, context: grpc.aio.ServicerContext) -> Any:
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            return await inner(request, context)

        return factory(with_request_id, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)


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

    async def start(self) -> None:
        """Bind and serve with health NOT_SERVING (the model is not loaded yet)."""
        cfg = self.config
        options = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                   ("grpc.max_send_message_length", cfg.max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(interceptors=[RequestIdInterceptor()], options=options)
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
        model = await asyncio.get_running_loop().run_in_executor(
            None, load_agent_model, self.config.model_dir, self.config.agent_index, self.config.model)
        self.servicer.attach(model)
        self._reaper = asyncio.get_running_loop().create_task(self._reap_idle(), name="idle-reaper")
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("agent %d SERVING on port %d (%s)", self.config.agent_index, self.port, model.provider)
        return model

    async def _reap_idle(self) -> None:
        period = min(max(self.config.idle_timeout_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            if self.servicer.episodes is not None:
                for eid in self.servicer.episodes.expire_idle(self.config.idle_timeout_s):
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
        while episodes is not None and len(episodes) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = len(episodes) if episodes is not None else 0
        ended = await self.servicer.end_streams()
        if left:
            log.warning("grace period over: ending %d live episode(s) (%d streams)", left, ended)
        await self.stop(grace=1.0)

    async def stop(self, grace: float | None = 0.0) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self.servicer.batcher is not None:
            await self.servicer.batcher.close()
            self.servicer.batcher = None
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http = None


async def serve(config: ServerConfig, ready: Callable[[AgentServer], None] | None = None) -> None:
    """Run an agent service until SIGTERM/SIGINT, then drain and exit (``marlctl serve``)."""
    server = AgentServer(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_drain)
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
