"""One agent's side of one episode, whatever carries it: the ``AgentLink`` protocol and its implementations.

``play_episode`` (``serving.play``) asks each agent's link for a decision and closes the links when
the episode ends; it does not know what carries them:

- ``StreamLink``: one ``Episode`` stream per episode (``marlctl run``, the default transport);
- ``multiplex.MuxEpisodeLink``: one episode's rows on an agent's shared ``Episodes`` stream
  (``marlctl run --transport multiplex``);
- ``LocalLink``: the agent's ONNX file in this process (``marlctl eval``; no network, never fails).

A remote link is the fault boundary of its agent: whatever goes wrong on the other side becomes a
failure reason (``failure_reason``: the same ladder for both remote transports), never an exception
that would stop the other agents or episodes.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from marlctl.serving.clientlog import client_text
from marlctl.serving.errors import AgentServiceError

log = logging.getLogger(__name__)

Decided = tuple[int | None, float, str | None, bool]
"""``(action or None, latency ms, failure reason or None, reconnected)``."""


class AgentLink(Protocol):
    """One agent's side of one episode."""

    async def decide(self, obs_O: np.ndarray, avail_A: np.ndarray) -> Decided:
        """This agent's decision for its own observation and avail mask (never raises for a remote failure)."""
        ...

    async def close(self) -> None:
        """The episode is over (releases the agent's state of it)."""
        ...


def failure_reason(exc: BaseException, index: int, what: str) -> str:
    """The fallback reason of a failed exchange with agent ``index`` (``timeout``, ``unavailable``,
    ``spec_mismatch`` or ``stream_error``); unexpected failures are logged."""
    import grpc

    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, grpc.aio.AioRpcError):
        return "unavailable" if exc.code() == grpc.StatusCode.UNAVAILABLE else "stream_error"
    if isinstance(exc, AgentServiceError):
        log.warning("agent %d: the service back at its address is another one: %s", index, exc)
        return "spec_mismatch"
    log.warning("agent %d: %s failed: %s: %s", index, what, type(exc).__name__, client_text(exc))
    return "stream_error"


def checked_action(action: int, avail_A: np.ndarray) -> bool:
    """A decision the runner may apply: an available action."""
    return 0 <= action < avail_A.shape[0] and bool(avail_A[action])


class _StreamEnded(ConnectionError):
    """The server ended the stream before answering."""


class StreamLink:
    """One agent's ``Episode`` stream for one episode, reopened after a failure (with a spec check first)."""

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

    async def decide(self, obs_O: np.ndarray, avail_A: np.ndarray) -> Decided:
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
        except Exception as exc:  # noqa: BLE001 - the fault boundary: see the module docstring
            self.drop()
            self.failed_before = True
            return None, math.nan, failure_reason(exc, self.index, "stream"), False
        latency_ms = (time.perf_counter() - t0) * 1e3
        action = int(reply.action)
        if not checked_action(action, avail_A):
            return None, math.nan, "invalid_decision", reconnecting
        return action, latency_ms, None, reconnecting

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


class LocalLink:
    """An in-process agent (``evaluate.LocalAgent``) as a link: a fresh episode on creation; latency = its
    ONNX Runtime call."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        agent.reset()

    async def decide(self, obs_O: np.ndarray, avail_A: np.ndarray) -> Decided:
        t0 = time.perf_counter()
        action, _ = self.agent.decide(obs_O, avail_A)
        return action, (time.perf_counter() - t0) * 1e3, None, False

    async def close(self) -> None:
        return None
