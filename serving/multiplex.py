"""The runner's multiplexed connection to one agent service: many episodes on one ``Episodes`` stream.

``marlctl run --transport multiplex`` gives each agent ONE stream shared by the ``K`` episodes in
flight instead of one stream per episode. Every episode still sends that agent only its own
observation; ``AgentMux`` gathers the decisions the episodes ask for while the previous message is
in flight and sends them as one ``ObservationBatch`` (rows keyed by the episode's slot), so one gRPC
message and one ONNX Runtime call serve many decisions (client-side batching, the mirror of the
server's micro-batching). ``MuxEpisodeLink`` is an episode's ``serving.links.AgentLink`` on it, so the
episode loop (``serving.play``), deadlines, fallbacks and records are shared with the other transports.

Failures, as for per-episode streams: a broken stream, ``UNAVAILABLE`` or a message past the
deadline fails every row of that message (``unavailable``, ``stream_error``, ``timeout``) and drops
the stream; the next decision asks the address for its spec again (``spec_mismatch`` when another
service answers) and opens a new stream, where every episode restarts with a FRESH recurrent state
(recorded as a reconnect). A row the server refuses (its own status code in the reply) fails only
that episode's decision (``refused``); that episode restarts its slot at its next decision.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from marlctl.serving import wire
from marlctl.serving.clientlog import client_text
from marlctl.serving.errors import AgentServiceError
from marlctl.serving.links import Decided, checked_action, failure_reason

log = logging.getLogger(__name__)

METHOD = "/marlctl.agent.v1.AgentService/Episodes"

class _Row:
    __slots__ = ("slot", "obs_O", "avail_A", "future", "t0")

    def __init__(self, slot: int, obs_O: np.ndarray, avail_A: np.ndarray, future: asyncio.Future) -> None:
        self.slot, self.obs_O, self.avail_A, self.future = slot, obs_O, avail_A, future
        self.t0 = time.perf_counter()


class AgentMux:
    """One agent's ``Episodes`` stream, shared by the runner's concurrent episodes (see the module docstring)."""

    def __init__(self, channel: Any, stub: Any, index: int, timeout_s: float, max_slots: int,
                 check_spec: Callable[[Any], None]) -> None:
        self.channel = channel
        self.stub = stub
        self.index = index
        self.timeout_s = timeout_s
        self.max_slots = max_slots
        self.check_spec = check_spec
        self._call: Any = None
        self._generation = 0
        """Number of the current stream; a slot whose ``_started`` differs must send start=true."""
        self._started: dict[int, int] = {}
        """slot -> generation of the stream its episode started on (-1: must restart on the current one)."""
        self._free = list(range(max_slots - 1, -1, -1))
        self._ended: list[int] = []
        self._pending: dict[int, _Row] = {}
        self._sending = False
        """A message is in flight (one at a time per stream: rows asked meanwhile wait for the next)."""
        self._drainer: asyncio.Task | None = None
        self._failed_before = False
        self.messages = 0
        """ObservationBatch messages sent."""
        self.rows = 0
        """Rows (decisions asked) sent; rows / messages = the client-side batch size."""

    # ---- episodes ---------------------------------------------------------------------------------------------
    def open_slot(self) -> int:
        if not self._free:
            raise AgentServiceError(f"agent {self.index}: more concurrent episodes than the service's "
                                    f"max_episodes={self.max_slots}")
        slot = self._free.pop()
        self._started.pop(slot, None)
        return slot

    def close_slot(self, slot: int) -> None:
        """The episode in ``slot`` is over: released on the server with the next message."""
        if self._started.pop(slot, None) is not None:
            self._ended.append(slot)
        row = self._pending.pop(slot, None)
        if row is not None and not row.future.done():
            row.future.cancel()
        self._free.append(slot)

    async def decide(self, slot: int, obs_O: np.ndarray, avail_A: np.ndarray) -> Decided:
        """This episode's decision, batched with whatever the other episodes ask meanwhile. When no message is
        in flight the caller sends at once (no hand-off to another task); otherwise its row waits for the
        next message, which goes out as soon as the one in flight is answered."""
        row = _Row(slot, obs_O, avail_A, asyncio.get_running_loop().create_future())
        self._pending[slot] = row
        if not self._sending:
            self._sending = True
            try:
                rows = list(self._pending.values())
                self._pending.clear()
                await self._send(rows)
            finally:
                self._sending = False
                if self._pending:  # rows that arrived meanwhile: sent by a task, so this episode goes on now
                    self._drainer = asyncio.get_running_loop().create_task(self._drain(), name=f"mux-{self.index}")
        try:
            async with asyncio.timeout(self.timeout_s):
                action, reason, reconnected = await row.future  # a timeout cancels it: _send skips it
        except TimeoutError:
            if self._pending.get(slot) is row:
                del self._pending[slot]
            self._started[slot] = -1  # the server may still apply it: restart the slot, as after a dropped stream
            return None, math.nan, "timeout", False
        if reason is not None:
            return None, math.nan, reason, False
        latency_ms = (time.perf_counter() - row.t0) * 1e3
        if not checked_action(action, avail_A):
            return None, math.nan, "invalid_decision", reconnected
        return action, latency_ms, None, reconnected

    # ---- the stream -------------------------------------------------------------------------------------------
    async def _drain(self) -> None:
        """Send the waiting rows, message after message, until none are left."""
        if self._sending:
            return
        self._sending = True
        try:
            while self._pending:
                rows = list(self._pending.values())
                self._pending.clear()
                await self._send(rows)
        finally:
            self._sending = False

    async def _send(self, rows: list[_Row]) -> None:
        import grpc
        from marlctl.proto import agent_pb2

        try:
            async with asyncio.timeout(self.timeout_s):
                if self._call is None:
                    if self._failed_before:  # whoever answers at this address now must still be this agent
                        self.check_spec(await self.stub.GetSpec(agent_pb2.GetSpecRequest(), wait_for_ready=False))
                    self._call = self.channel.stream_stream(METHOD)(wait_for_ready=False)
                    self._generation += 1
                gen = self._generation
                start_R = np.array([self._started.get(r.slot) != gen for r in rows], bool)
                ended, self._ended = self._ended, []
                message = wire.encode_observation_batch(
                    np.fromiter((r.slot for r in rows), np.uint32, len(rows)), start_R,
                    np.stack([r.obs_O for r in rows]), np.stack([r.avail_A for r in rows]),
                    np.array(ended, np.uint32))
                await self._call.write(message)
                self.messages += 1
                self.rows += len(rows)
                raw = await self._call.read()
                if raw is grpc.aio.EOF:
                    raise ConnectionError("the service closed the stream")
                reply = wire.decode_decision_batch(raw)
        except asyncio.CancelledError:  # the sending episode was cancelled: the stream's state is unknown
            self._fail(rows, "stream_error")
            raise
        except Exception as exc:  # noqa: BLE001 - the fault boundary of this agent (serving.links)
            return self._fail(rows, failure_reason(exc, self.index, "multiplexed stream"))
        if not reply.actions.shape[0] == reply.codes.shape[0] == len(rows):  # not an answer to this message
            log.warning("agent %d answered %d rows to a message of %d", self.index, reply.actions.shape[0], len(rows))
            return self._fail(rows, "stream_error")
        if reply.error:
            log.warning("agent %d refused rows: %s", self.index, client_text(reply.error))
        for i, row in enumerate(rows):
            if row.future.done():  # timed out: the server's state of the slot moved without the episode
                if row.slot in self._started:
                    self._started[row.slot] = -1
                continue
            if reply.codes[i] != 0:
                self._started[row.slot] = -1
                row.future.set_result((None, "refused", False))
                continue
            reconnected = bool(start_R[i]) and row.slot in self._started  # an episode that ran before restarts
            self._started[row.slot] = gen
            row.future.set_result((int(reply.actions[i]), None, reconnected))

    def _fail(self, rows: list[_Row], reason: str) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._failed_before = True
        for row in rows:
            if not row.future.done():  # its episode is still open: it restarts (and reports a reconnect) later
                self._started[row.slot] = -1
                row.future.set_result((None, reason, False))

    async def close(self) -> None:
        """Half-close the stream (the server ends its episodes) and stop the sender."""
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
        call, self._call = self._call, None
        if call is None:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await call.done_writing()
                await call.code()
        except Exception:  # noqa: BLE001 - the run is over; a failing close only loses server-side cleanup
            call.cancel()


class MuxEpisodeLink:
    """One episode's view of an ``AgentMux``: the interface of a per-episode stream link."""

    def __init__(self, mux: AgentMux) -> None:
        self.mux = mux
        self.slot = mux.open_slot()

    async def decide(self, obs_O: np.ndarray, avail_A: np.ndarray) -> Decided:
        return await self.mux.decide(self.slot, obs_O, avail_A)

    async def close(self) -> None:
        self.mux.close_slot(self.slot)
