"""``marlctl.agent.v1.AgentService``: the four RPCs over the episode tables, the row validator and the batcher.

- ``Episode`` (one episode per stream) and ``Decide`` (unary) decide one row per message; ``Episodes``
  (the multiplexed stream) a message's rows at once. All three run the same row checks
  (``serving.rows``) and the same ``MicroBatcher.decide_rows``; bad rows of a multiplexed message get
  their own status code and leave the others untouched.
- Every RPC exchanges raw bytes (``add_to_server``) decoded by ``serving.wire``: bytes that are not the
  RPC's message answer INVALID_ARGUMENT with a short reason, never UNKNOWN; a failure that is the
  server's own answers INTERNAL with the request id and is logged with its traceback.
- Refusals are logged one line each through ``clientlog.RefusalLog`` (client data escaped and capped,
  rate-limited per peer host) and counted in ``marl_agent_decisions_total{code}``.
- Each episode runs the model version (``LiveModel``) it started on (rollouts: ``server.AgentServer.reload``):
  a rollout changes what new episodes get, never a live one.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from marlctl.agents.onnx_io import marlctl_version
from marlctl.proto import agent_pb2
from marlctl.serving import wire
from marlctl.serving.batcher import MicroBatcher
from marlctl.serving.clientlog import CLIENT_TEXT_LIMIT, RefusalLog, client_text
from marlctl.serving.config import ServerConfig
from marlctl.serving.episodes import Episode, EpisodeTable, SlotState
from marlctl.serving.metrics import ServerMetrics, observe_many
from marlctl.serving.model import AgentModel
from marlctl.serving.rows import ObsGuard, RequestError, RowValidator

log = logging.getLogger(__name__)

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
EPISODE_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""Unary episode ids (``fullmatch``: a trailing newline is not part of the id)."""
REQUEST_ID_KEY = "x-request-id"
BIG_MESSAGE_BYTES = 256 * 1024
GC_PERIOD_S = 0.2
DRAINING = "server is draining (shutting down): no new episodes; use another replica"
_CODES = {code.value[0]: code for code in grpc.StatusCode}
C = grpc.StatusCode
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def echo_request_id(context: grpc.aio.ServicerContext) -> None:
    """An RPC's start: the client's ``x-request-id`` (1..128 printable characters), if it sent one, names the
    RPC in the server's log lines and goes back in the trailing metadata. (Done here rather than in a server
    interceptor: an interceptor costs every unary call tens of microseconds.)"""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY:
            if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
                request_id_var.set(value)
                context.set_trailing_metadata(((REQUEST_ID_KEY, value),))
            return


def request_id(context: grpc.aio.ServicerContext) -> str:
    """This RPC's request id: the client's, or a new one (a refusal always carries one, so the client can find
    the server's log line)."""
    rid = request_id_var.get()
    if not rid:
        rid = uuid.uuid4().hex[:16]
        request_id_var.set(rid)
    return rid


@dataclass(eq=False)
class LiveModel:
    """One loaded model version: the model, its batcher and row validator; episodes pin the one they start on."""

    model: AgentModel
    batcher: MicroBatcher
    rows: RowValidator
    serial: int
    """1 for the model loaded at start, +1 per rollout (keys ``SlotState.version_S``)."""
    pins: int = 0
    """Live episodes (unary, streams, multiplexed slots) running this version."""
    ok_counter: Any = None
    counters: dict[grpc.StatusCode, Any] = field(default_factory=dict)

    @property
    def hidden_dim(self) -> int:
        return self.model.hidden_dim

    @property
    def version(self) -> str:
        return self.model.version


class AgentServicer:
    """``marlctl.agent.v1.AgentService`` over the loaded model versions (registered by ``add_to_server``)."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.current: LiveModel | None = None
        """The version new episodes get."""
        self.models: dict[int, LiveModel] = {}
        """Every version with live episodes (and the current one), by serial."""
        self.episodes = EpisodeTable(config.max_episodes, self._on_live_change)
        self.draining = False
        self.on_unpinned: Callable[[LiveModel], None] | None = None
        """Called when a version that is no longer current loses its last episode (``server.AgentServer``)."""
        self._agent = str(config.agent_index)
        self._live_gauge = metrics.live_episodes.labels(self._agent)
        self._decision_hist = metrics.decision_seconds.labels(self._agent)
        self._stream_tasks: set[asyncio.Task] = set()
        self._refusals = RefusalLog(log)
        self._gc_pending = False
        self.rollout_attempts = 0
        """Rollouts tried (``AgentServer.reload``/``rollback``); ``rollout_refusal``: why the last was refused."""
        self.rollout_refusal = ""
        self._internal = RefusalLog(log, burst=3, period_s=60.0)

    # ---- model versions -----------------------------------------------------------------------------------
    @property
    def model(self) -> AgentModel | None:
        return self.current.model if self.current is not None else None

    @property
    def batcher(self) -> MicroBatcher | None:
        return self.current.batcher if self.current is not None else None

    def _on_live_change(self, n: int) -> None:
        self._live_gauge.set(n)

    def make_live(self, model: AgentModel, serial: int) -> LiveModel:
        """Wrap a loaded model as a version (its batcher started on the running loop); not yet current."""
        batcher = MicroBatcher(model, self.config, self.metrics, self.episodes)
        batcher.start()
        guard = ObsGuard.build(self.config.obs_guard, self.config.obs_margin, model.obs_low_O, model.obs_high_O)
        lm = LiveModel(model, batcher, RowValidator(model.obs_dim, model.n_actions, guard), serial)
        lm.ok_counter = self._counter(lm, C.OK)
        return lm

    def attach(self, lm: LiveModel) -> LiveModel | None:
        """Make ``lm`` the version new episodes get; returns the previous current version."""
        old, self.current = self.current, lm
        self.models[lm.serial] = lm
        if old is not None and old.pins == 0:
            self._retire(old)
        return old

    def _retire(self, lm: LiveModel) -> None:
        if lm is self.current:
            return
        self.models.pop(lm.serial, None)
        if self.on_unpinned is not None:
            self.on_unpinned(lm)

    def _pin(self, lm: LiveModel, n: int = 1) -> None:
        lm.pins += n

    def _unpin(self, lm: LiveModel, n: int = 1) -> None:
        lm.pins -= n
        if lm.pins <= 0 and lm is not self.current:
            self._retire(lm)

    def _counter(self, lm: LiveModel | None, code: grpc.StatusCode) -> Any:
        if lm is None:
            return self.metrics.decisions_total.labels(self._agent, "none", code.name)
        c = lm.counters.get(code)
        if c is None:
            c = lm.counters[code] = self.metrics.decisions_total.labels(self._agent, lm.model.sha256[:12], code.name)
        return c

    def _ready(self) -> LiveModel:
        if self.current is None:
            raise RequestError(C.UNAVAILABLE, "model still loading; wait for health SERVING")
        return self.current

    def _no_new_episodes_while_draining(self) -> None:
        if self.draining:
            raise RequestError(C.UNAVAILABLE, DRAINING)

    # ---- refusals -----------------------------------------------------------------------------------------
    def _collect_soon(self, nbytes: int) -> None:
        """After refusing a big message: gRPC's own handler objects form reference cycles (RPC state, abort
        exception, frames holding the request), which the cyclic GC frees only when its allocation counters
        say so (megabytes per refused message meanwhile). One full collection shortly after frees them: at most
        one per ``GC_PERIOD_S`` (~30 ms each on a loaded core), never for messages under ``BIG_MESSAGE_BYTES``."""
        if nbytes < BIG_MESSAGE_BYTES or self._gc_pending:
            return
        self._gc_pending = True

        def collect() -> None:
            self._gc_pending = False
            gc.collect()

        asyncio.get_running_loop().call_later(GC_PERIOD_S, collect)

    async def _refuse(self, context: grpc.aio.ServicerContext, err: RequestError, episode_id: str,
                      lm: LiveModel | None = None, nbytes: int = 0) -> None:
        self._collect_soon(nbytes)
        self._counter(lm or self.current, err.code).inc()
        rid = request_id(context)
        self._refusals.refused(context.peer(), "request %s episode %s refused: %s %s", rid, episode_id,
                               err.code.name, str(err))
        await context.abort(err.code, str(err), trailing_metadata=((REQUEST_ID_KEY, rid),))

    async def _internal_error(self, context: grpc.aio.ServicerContext, what: str, exc: BaseException) -> None:
        """INTERNAL for a failure that is the server's own (logged with its traceback, rate-limited); nothing
        for an RPC the client already ended."""
        rid = request_id(context)
        if context.done() or context.cancelled():
            log.debug("request %s: %s ended by the client (%s)", rid, what, client_text(repr(exc)))
            return
        self._internal.refused(context.peer(), "request %s: internal error in %s: %s", rid, what, repr(exc),
                               exc_info=exc)
        _detached(exc)
        del exc
        await context.abort(C.INTERNAL, f"internal server error (request id {rid}); the server goes on",
                            trailing_metadata=((REQUEST_ID_KEY, rid),))

    @contextlib.asynccontextmanager
    async def _guarded(self, context: grpc.aio.ServicerContext, what: str) -> AsyncIterator[_Read]:
        """A handler body: a ``RequestError`` escaping it is refused; anything else unexpected is INTERNAL, logged.
        The abort happens outside the ``except`` with the error's traceback dropped, so no exception chain keeps
        the handler's frames (and a refused multi-megabyte message in them) alive in a reference cycle."""
        read = _Read()
        try:
            yield read
            return
        except grpc.aio.AbortError:
            raise
        except RequestError as exc:
            err: RequestError | None = _detached(exc)
            failure: BaseException | None = None
        except Exception as exc:  # noqa: BLE001 - the fault boundary of one RPC
            err, failure = None, exc
        if err is not None:
            await self._refuse(context, err, what, nbytes=read.nbytes)
        else:
            await self._internal_error(context, what, failure)  # type: ignore[arg-type]

    # ---- one row (Decide, Episode) ------------------------------------------------------------------------
    async def _decide_one(self, ep: Episode, obs_O: np.ndarray, avail_A: np.ndarray, t0: int
                          ) -> tuple[int, np.ndarray, int, int, int, int]:
        """Check, decide, advance the episode; ``(action, scores [A], step, decision_ns, inference_ns, batch)``.
        A refused row (before inference here, after it in the batcher) raises ``RequestError`` and leaves the
        episode as it was.
        A unary row is decided inline when nothing is queued (``MicroBatcher.decide``, ``alone``)."""
        lm: LiveModel = ep.model
        obs_O = lm.rows.check_one(obs_O, avail_A)
        action, scores_A, hidden_1H, inf_ns, batch = await lm.batcher.decide(obs_O, ep.prev_action, avail_A,
                                                                             ep.hidden_1H, alone=ep.unary)
        ep.hidden_1H, ep.prev_action = hidden_1H, action
        step = ep.step
        ep.step += 1
        dt = time.perf_counter_ns() - t0
        self._decision_hist.observe(dt * 1e-9)
        lm.ok_counter.inc()
        return action, scores_A, step, dt, inf_ns, batch

    def _open(self, episode_id: str, unary: bool) -> Episode:
        lm = self._ready()
        ep = self.episodes.open(episode_id, unary, lm)
        self._pin(lm)
        return ep

    def _close(self, episode_id: str) -> None:
        ep = self.episodes.close(episode_id)
        if ep is not None:
            self._unpin(ep.model)

    def expire_idle(self) -> list[str]:
        """Drop unary episodes idle longer than ``idle_timeout_s``; their ids."""
        stale = self.episodes.expire_idle(self.config.idle_timeout_s)
        for ep in stale:
            self._unpin(ep.model)
        return [ep.episode_id for ep in stale]

    async def Decide(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """One decision of a unary episode (``DecideRequest`` bytes in, ``Decision`` bytes out)."""
        t0 = time.perf_counter_ns()
        label = ["-"]
        echo_request_id(context)
        try:
            return await self._decide_unary(request, t0, label)
        except grpc.aio.AbortError:
            raise
        except RequestError as exc:
            err: RequestError | None = _detached(exc)
            failure: BaseException | None = None
        except Exception as exc:  # noqa: BLE001 - the fault boundary of one RPC
            err, failure = None, exc
        nbytes = len(request)
        del request  # refused: nothing of it stays referenced while the abort goes out
        if err is not None:
            await self._refuse(context, err, label[0], nbytes=nbytes)
        else:
            await self._internal_error(context, "Decide", failure)  # type: ignore[arg-type]
        raise AssertionError("unreachable: abort raises")

    async def _decide_unary(self, request: bytes, t0: int, label: list[str]) -> bytes:
        self._ready()
        try:
            eid, start, end, obs = wire.decode_decide_request(request)
        except ValueError as exc:
            raise RequestError(C.INVALID_ARGUMENT, str(exc)) from None
        label[0] = eid[:CLIENT_TEXT_LIMIT + 1]
        if not EPISODE_ID_RE.fullmatch(eid):
            raise RequestError(C.INVALID_ARGUMENT, f"episode_id {eid[:40]!r} invalid: 1..128 chars of [A-Za-z0-9._:-]")
        if start:
            self._no_new_episodes_while_draining()
            if obs is None:
                raise RequestError(C.INVALID_ARGUMENT, "start=true needs an observation")
            ep = self._open(eid, unary=True)
        else:
            ep = self.episodes.get(eid)
        if obs is None:
            if not end:
                raise RequestError(C.INVALID_ARGUMENT,
                                   "observation missing (only end=true may omit it, to release the episode)")
            self._close(eid)
            return wire.encode_decision(-1, _NO_SCORES, ep.step, 0, 0, 0)
        if ep.busy:
            raise RequestError(C.FAILED_PRECONDITION,
                               f"episode {eid!r} has a decision in flight; unary calls of one episode must be sequential")
        ep.busy = True
        try:
            decision = wire.encode_decision(*await self._decide_one(ep, obs[0], obs[1], t0))
        except RequestError:
            if start:
                self._close(eid)  # a refused first step leaves nothing behind
            raise
        finally:
            ep.busy = False
            ep.last_seen = time.monotonic()
        if end:
            self._close(eid)
        return decision

    # ---- Episode: one episode per stream ------------------------------------------------------------------
    async def Episode(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        """One episode per stream; context.read()/write() rather than an async generator saves a layer per message."""
        episode_id = f"stream-{uuid.uuid4().hex[:12]}"
        echo_request_id(context)
        async with self._guarded(context, episode_id) as read, self._stream_lifetime(context, "episode"):
            # the first message is read before the episode may be refused: a client that writes, then reads, is
            # told why (a refusal before its write raced it into the client's "Internal error from Core")
            if (raw := await context.read()) is grpc.aio.EOF:
                return
            self._no_new_episodes_while_draining()
            ep = self._open(episode_id, unary=False)
            try:
                while raw is not grpc.aio.EOF:
                    t0 = time.perf_counter_ns()
                    read.nbytes = len(raw)
                    try:
                        obs_O, avail_A, client_eid = wire.decode_observation(raw)
                    except ValueError as exc:
                        raise RequestError(C.INVALID_ARGUMENT, str(exc)) from None
                    if client_eid and ep.step == 0:
                        log.debug("stream %s is client episode %s", episode_id, client_text(client_eid))
                    await context.write(wire.encode_decision(*await self._decide_one(ep, obs_O, avail_A, t0)))
                    raw = await context.read()
            finally:
                self._close(episode_id)

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
            context.set_code(C.UNAVAILABLE)
            context.set_details(f"server shut down; {what} ended after the drain grace period")
        finally:
            if task is not None:
                self._stream_tasks.discard(task)

    # ---- Episodes: many episodes on one stream ------------------------------------------------------------
    async def Episodes(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        """``ObservationBatch`` in, ``DecisionBatch`` out: per-slot state in a ``SlotState``, every message decided
        as one batch per model version, bad rows refused row by row."""
        stream_id = f"episodes-{uuid.uuid4().hex[:12]}"
        echo_request_id(context)
        async with self._guarded(context, stream_id) as read, self._stream_lifetime(context, "episodes"):
            if (raw := await context.read()) is grpc.aio.EOF:  # read first, as in Episode
                return
            self._no_new_episodes_while_draining()
            lm = self._ready()
            state = SlotState(lm.hidden_dim)
            try:
                while raw is not grpc.aio.EOF:
                    t0 = time.perf_counter_ns()
                    read.nbytes = len(raw)
                    try:
                        rows = wire.decode_observation_batch(raw)
                    except ValueError as exc:
                        raise RequestError(C.INVALID_ARGUMENT, str(exc)) from None
                    self._check_message(rows)
                    await context.write(await self._decide_rows(state, rows, t0, context.peer()))
                    raw = await context.read()
            finally:
                self._release_slots(state, np.flatnonzero(state.live_S))

    def _release_slots(self, state: SlotState, slots: np.ndarray) -> None:
        """End the live episodes in ``slots`` (unpinning their versions)."""
        slots = slots[state.live_S[slots]]
        if not slots.size:
            return
        self.episodes.remove_slots(int(slots.size))
        serials, counts = np.unique(state.version_S[slots], return_counts=True)
        for serial, n in zip(serials.tolist(), counts.tolist(), strict=True):
            lm = self.models.get(serial)
            if lm is not None:
                self._unpin(lm, n)
        state.live_S[slots] = False

    def _check_message(self, rows: wire.ObservationRows) -> None:
        """A message that cannot be read as rows ends the stream (INVALID_ARGUMENT); row-level problems don't."""
        lm = self._ready()
        R, bound = rows.slots.shape[0], self.config.max_episodes
        n_obs, A = lm.model.obs_dim, lm.model.n_actions
        problems = []
        if rows.start.shape[0] != R:
            problems.append(f"start has {rows.start.shape[0]} values for {R} slots")
        if rows.obs.shape[0] != R * n_obs:
            problems.append(f"obs has {rows.obs.shape[0]} values, expected {R} rows x obs_dim={n_obs}")
        if rows.avail.shape[0] != R * A:
            problems.append(f"avail_actions has {rows.avail.shape[0]} values, expected {R} rows x n_actions={A}")
        if R and (int(rows.slots.max()) >= bound or np.unique(rows.slots).shape[0] != R):
            problems.append(f"slots must be distinct and < max_episodes={bound}")
        if rows.end.shape[0] and int(rows.end.max()) >= bound:
            problems.append(f"end slots must be < max_episodes={bound}")
        if problems:
            raise RequestError(C.INVALID_ARGUMENT, "malformed ObservationBatch: " + "; ".join(problems))

    async def _decide_rows(self, state: SlotState, rows: wire.ObservationRows, t0: int, peer: str) -> bytes:
        """Release ended slots, refuse bad rows (their own code), decide the rest (one batch per model version,
        normally one); the reply bytes. A refused row leaves its slot as it was."""
        cur = self._ready()
        episodes = self.episodes
        R, A = rows.slots.shape[0], cur.model.n_actions
        if rows.end.shape[0]:
            state.ensure(int(rows.end.max()) + 1)
            self._release_slots(state, np.unique(rows.end).astype(np.int64))
        slots_R, start_R = rows.slots.astype(np.int64), rows.start
        obs_RO, avail_RA = rows.obs.reshape(R, cur.model.obs_dim), rows.avail.reshape(R, A)
        state.ensure(int(slots_R.max()) + 1 if R else 0)
        live_R = state.live_S[slots_R]
        ver_R = np.where(start_R, cur.serial, state.version_S[slots_R])
        code_R = np.zeros(R, np.uint32)
        reasons: list[str] = []

        def refuse(mask_R: np.ndarray, code: grpc.StatusCode, why: str) -> None:
            mask_R = mask_R & (code_R == 0)
            if mask_R.any():
                code_R[mask_R] = code.value[0]
                reasons.append(f"slot {int(slots_R[np.argmax(mask_R)])}: {why}")

        serials = np.unique(ver_R).tolist()
        for serial in serials:  # the row checks of each row's own version
            lm = self.models.get(serial, cur)
            g_R = ver_R == serial
            obs_g, refusals = lm.rows.before(obs_RO if len(serials) == 1 else obs_RO[g_R],
                                             avail_RA if len(serials) == 1 else avail_RA[g_R])
            if len(serials) == 1:
                obs_RO = obs_g
            elif obs_g is not obs_RO:
                obs_RO = obs_RO.copy()
                obs_RO[g_R] = obs_g
            for r in refusals:
                mask_R = np.zeros(R, bool)
                mask_R[g_R] = r.rows_R
                refuse(mask_R, r.code, r.why)
        refuse(~start_R & ~live_R, C.FAILED_PRECONDITION, "no live episode in this slot (begin one with start=true)")
        if self.draining:
            refuse(start_R, C.UNAVAILABLE, DRAINING)
        new_R = start_R & ~live_R & (code_R == 0)
        over = int(new_R.sum()) - episodes.free()
        if over > 0:
            refuse(new_R & (np.cumsum(new_R) > int(new_R.sum()) - over), C.RESOURCE_EXHAUSTED,
                   f"live-episode bound reached ({episodes.max_episodes}); end episodes or retry later")
        action_R = np.full(R, -1, np.int32)
        scores_RA = np.full((R, A), np.nan, np.float32)
        step_R = np.zeros(R, np.uint32)
        inf_ns = decided = 0
        ok_R = code_R == 0
        for serial in np.unique(ver_R[ok_R]).tolist():
            lm = self.models.get(serial, cur)
            idx = np.flatnonzero(ok_R & (ver_R == serial))
            sl, fresh = slots_R[idx], start_R[idx]
            hidden_BH, prev_B, step_B = state.hidden_SH[sl], state.prev_S[sl], state.step_S[sl]  # copies
            if fresh.any():
                hidden_BH[fresh], prev_B[fresh], step_B[fresh] = 0.0, -1, 0
            avail_BA = avail_RA[idx]
            action_B, scores_BA, hidden_out_BH, ns, bad = await lm.batcher.decide_rows(obs_RO[idx], prev_B, avail_BA,
                                                                                       hidden_BH)
            inf_ns += ns
            if bad is not None:
                mask_R = np.zeros(R, bool)
                mask_R[idx[bad.rows_R]] = True
                refuse(mask_R, bad.code, bad.why)
                keep = ~bad.rows_R
                idx, sl, fresh = idx[keep], sl[keep], fresh[keep]
                action_B, scores_BA, hidden_out_BH, step_B = action_B[keep], scores_BA[keep], hidden_out_BH[keep], \
                    step_B[keep]
            was_live = state.live_S[sl]
            moved = was_live & (state.version_S[sl] != serial)  # a live slot restarted on another version
            for old, n in zip(*np.unique(state.version_S[sl][moved], return_counts=True), strict=True):
                old_lm = self.models.get(int(old))
                if old_lm is not None:
                    self._unpin(old_lm, int(n))
            newly = int((~was_live).sum())
            episodes.add_slots(newly)
            self._pin(lm, newly + int(moved.sum()))
            state.hidden_SH[sl], state.prev_S[sl], state.step_S[sl] = hidden_out_BH, action_B, step_B + 1
            state.live_S[sl], state.version_S[sl] = True, serial
            action_R[idx], scores_RA[idx], step_R[idx] = action_B, scores_BA, step_B
            decided += idx.size
            if idx.size:
                lm.ok_counter.inc(idx.size)
        dt = time.perf_counter_ns() - t0
        observe_many(self._decision_hist, dt * 1e-9, decided)
        error = ""
        if reasons:
            for code in np.unique(code_R[code_R != 0]):
                self._counter(cur, _CODES[int(code)]).inc(int((code_R == code).sum()))
            error = "; ".join(reasons)
            self._refusals.refused(peer, "request %s: %s of %s rows refused: %s", request_id_var.get() or "-",
                                   R - decided, R, error)
        return wire.encode_decision_batch(action_R, scores_RA, code_R, step_R, error, dt, inf_ns, decided)

    # ---- GetSpec ------------------------------------------------------------------------------------------
    async def GetSpec(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """What this service runs (``GetSpecRequest`` bytes in, ``AgentSpec`` bytes out); with an ``episode_id``,
        the version that unary episode runs."""
        echo_request_id(context)
        async with self._guarded(context, "GetSpec"):
            lm = self._ready()
            try:
                req = agent_pb2.GetSpecRequest.FromString(request)
            except Exception:  # noqa: BLE001 - DecodeError and friends: the client's bytes
                raise RequestError(C.INVALID_ARGUMENT, "malformed GetSpecRequest message") from None
            eid = req.episode_id
            if eid:
                if not EPISODE_ID_RE.fullmatch(eid):
                    raise RequestError(C.INVALID_ARGUMENT,
                                       f"episode_id {eid[:40]!r} invalid: 1..128 chars of [A-Za-z0-9._:-]")
                lm = self.episodes.get(eid).model
            return self.spec(lm).SerializeToString()
        raise AssertionError("unreachable: abort raises")

    def spec(self, lm: LiveModel) -> agent_pb2.AgentSpec:
        model = lm.model
        m = model.manifest
        return agent_pb2.AgentSpec(
            agent_index=model.index, n_agents=m["n_agents"], obs_dim=m["obs_dim"], n_actions=m["n_actions"],
            hidden_dim=m["hidden_dim"], algorithm=m["algorithm"], kind=m["kind"], env_id=m["env_id"],
            model_sha256=model.sha256, manifest_version=m["version"], server_version=marlctl_version(),
            env_steps=m["env_steps"], max_episodes=self.config.max_episodes, execution_provider=model.provider,
            model_version=model.version, rollout_attempts=self.rollout_attempts,
            rollout_refusal=self.rollout_refusal)

    async def end_streams(self) -> int:
        """Cancel the live streams (after the grace period); each ends with UNAVAILABLE."""
        tasks = list(self._stream_tasks)
        for t in tasks:
            t.cancel()
        return len(tasks)


_NO_SCORES = np.zeros(0, np.float32)


class _Read:
    """Size of the message a stream handler read last (a refusal of a big one schedules a collection)."""

    __slots__ = ("nbytes",)

    def __init__(self) -> None:
        self.nbytes = 0


def _detached(exc: BaseException) -> Any:
    """``exc`` without its traceback and context: it no longer keeps the frames it passed through alive."""
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    return exc


def add_to_server(servicer: AgentServicer, server: grpc.aio.Server) -> None:
    """Register the service like the generated ``add_AgentServiceServicer_to_server``, except that every RPC
    exchanges raw bytes (decoded/encoded by ``serving.wire``), so bytes that are not a message are the
    handler's INVALID_ARGUMENT, not gRPC's UNKNOWN."""
    handlers = {
        "Episode": grpc.stream_stream_rpc_method_handler(servicer.Episode),
        "Episodes": grpc.stream_stream_rpc_method_handler(servicer.Episodes),
        "Decide": grpc.unary_unary_rpc_method_handler(servicer.Decide),
        "GetSpec": grpc.unary_unary_rpc_method_handler(servicer.GetSpec),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
