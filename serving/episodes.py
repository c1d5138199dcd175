"""Episode state of the agent service: the table of live episodes and a multiplexed stream's slot arrays.

``EpisodeTable`` holds every unary and per-episode-stream episode (recurrent state, previous
action, step, the model version it runs) and counts the slots of ``Episodes`` streams, so one
bound (``max_episodes``) covers all three; it remembers recently finished ids so a late call
gets a clear FAILED_PRECONDITION. ``SlotState`` is one ``Episodes`` stream's state as arrays
indexed by slot.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from marlctl.serving.rows import RequestError


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
    model: Any = None
    """The ``LiveModel`` (model version) this episode started on and finishes on."""


class EpisodeTable:
    """Live episodes, bounded; remembers recently finished ids for clear errors."""

    def __init__(self, max_episodes: int, on_change: Callable[[int], None]) -> None:
        self.max_episodes = max_episodes
        self._live: dict[str, Episode] = {}
        self.unary = 0
        """Live unary episodes (the micro-batcher waits for them, ``unary_window_us``)."""
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

    def open(self, episode_id: str, unary: bool, model: Any) -> Episode:
        """A new episode on ``model`` (a ``LiveModel``: its hidden size and version)."""
        if episode_id in self._live:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"episode {episode_id!r} is already live")
        if len(self) >= self.max_episodes:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"live-episode bound reached ({self.max_episodes}); end episodes or retry later")
        ep = Episode(episode_id, unary, np.zeros((1, model.hidden_dim), np.float32), last_seen=time.monotonic(),
                     model=model)
        self._live[episode_id] = ep
        self.unary += unary
        self._finished.pop(episode_id, None)
        self._on_change(len(self))
        return ep

    def get(self, episode_id: str) -> Episode:
        ep = self._live.get(episode_id)
        if ep is None:
            why = "already ended or expired" if episode_id in self._finished else "unknown (start it with start=true)"
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"episode {episode_id!r} is {why}")
        return ep

    def close(self, episode_id: str) -> Episode | None:
        """End a live episode (None when it was not live)."""
        ep = self._live.pop(episode_id, None)
        if ep is not None:
            self.unary -= ep.unary
            self._finished[episode_id] = None
            while len(self._finished) > 4096:
                self._finished.popitem(last=False)
            self._on_change(len(self))
        return ep

    def expire_idle(self, idle_timeout_s: float) -> list[Episode]:
        """End the unary episodes idle longer than ``idle_timeout_s``."""
        now = time.monotonic()
        stale = [k for k, ep in self._live.items() if ep.unary and not ep.busy and now - ep.last_seen > idle_timeout_s]
        return [ep for k in stale if (ep := self.close(k)) is not None]


class SlotState:
    """The live episodes of one ``Episodes`` stream, as arrays indexed by slot (grown on demand)."""

    def __init__(self, hidden_dim: int) -> None:
        self.hidden_SH = np.zeros((0, hidden_dim), np.float32)
        self.prev_S = np.zeros(0, np.int64)
        self.step_S = np.zeros(0, np.uint32)
        self.live_S = np.zeros(0, bool)
        self.version_S = np.zeros(0, np.int64)
        """The ``LiveModel.serial`` each slot's episode started on."""

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
        self.version_S = np.concatenate([self.version_S, np.zeros(size - have, np.int64)])

    def live_count(self) -> int:
        return int(self.live_S.sum())
