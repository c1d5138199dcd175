"""The micro-batcher: the decisions concurrent episodes ask for while the event loop is busy, as ONE ONNX Runtime call.

Where that call runs is measured, not assumed (``bench/serving.py``; ``ServerConfig.batching``):
``thread``: in a single worker thread, so the loop never blocks on inference - right for big
models, but each hand-off costs a thread switch and GIL contention (tens to thousands of us on a
loaded CPU). ``loop``: on the event loop itself - for a small agent network a whole batch takes
tens of microseconds, less than one thread hand-off, so this is faster. ``auto`` (default) picks
``loop`` when the warm-up measured the largest warm-up batch under ``loop_max_us``, else
``thread``; with at most one live episode it decides inline at once (nothing to batch with).
``off``: every decision inline, no batching (the baseline). ``decide_rows`` is the one place that
runs ONNX Runtime; ``decide`` queues one row for the next batch.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from marlctl.serving.config import ServerConfig
from marlctl.serving.episodes import EpisodeTable
from marlctl.serving.metrics import ServerMetrics
from marlctl.serving.model import AgentModel
from marlctl.serving.rows import Refusal, RequestError, RowValidator

log = logging.getLogger(__name__)


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

    def __init__(self, model: AgentModel, config: ServerConfig, metrics: ServerMetrics, episodes: EpisodeTable) -> None:
        self.model = model
        self.config = config
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._running = False
        self._episodes = episodes
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
        self._unary_waiting = 0
        """Unary rows queued since the last batch (they wait up to ``unary_window_us`` for company)."""
        self._gather: tuple[asyncio.Future, int] | None = None
        """While the batcher waits for unary company: (resolved when this many rows are queued, that many)."""
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

    async def decide(self, obs_O: np.ndarray, prev_action: int, avail_A: np.ndarray, hidden_1H: np.ndarray,
                     alone: bool = False) -> DecisionOut:
        """One row, batched with whatever else is queued; decided inline at once when batching is ``off`` or
        (``auto``) at most one episode is live. ``alone`` marks a unary row: unary calls reach the loop one per
        turn, never together, so the batch they start waits up to ``unary_window_us`` until every live unary
        episode has a row queued (one ONNX Runtime call instead of one each: measured in bench/serving.py)."""
        if self.mode == "off" or (self._auto and not self._pending and not self._running
                                  and len(self._episodes) <= 1):
            action_B, scores_BA, hidden_BH, dt, refused = await self.decide_rows(
                obs_O[None], np.array([prev_action], np.int64), avail_A[None], hidden_1H, inline=True)
            if refused is not None:
                raise RequestError(refused.code, refused.why)
            return int(action_B[0]), scores_BA[0], hidden_BH, dt, 1
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(obs_O, prev_action, avail_A, hidden_1H, fut))
        if alone:
            self._unary_waiting += 1
            gather = self._gather
            if gather is not None and len(self._pending) >= gather[1] and not gather[0].done():
                gather[0].set_result(None)
        self._wake.set()
        return await fut

    async def decide_rows(self, obs_BO: np.ndarray, prev_B: np.ndarray, avail_BA: np.ndarray, hidden_BH: np.ndarray,
                          inline: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, Refusal | None]:
        """The one place that runs ONNX Runtime: ``(action [B], scores [B, A], hidden [B, H], inference_ns, refused)``
        in calls of at most ``max_batch`` rows, on the inference thread in ``thread`` mode (unless ``inline``), else
        on the loop. ``refused``: the rows whose outputs are unusable (``RowValidator.after``, checked here once per
        batch), or None; their episodes must not advance. A failing call raises ``RequestError(INTERNAL)`` for the
        rows it held; the server goes on."""
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
        action_B, scores_BA, hidden_out_BH = out
        return action_B, scores_BA, hidden_out_BH, dt, RowValidator.after(action_B, scores_BA, hidden_out_BH, avail_BA)

    async def _gather_unary(self) -> None:
        """Wait until every live unary episode has a row queued, or ``unary_window_us``."""
        target = min(self.config.max_batch, self._episodes.unary)
        if len(self._pending) >= target:
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._gather = (fut, target)
        timer = loop.call_later(self.config.unary_window_us * 1e-6, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            timer.cancel()
            self._gather = None

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
            elif self._unary_waiting and self.config.unary_window_us:
                await self._gather_unary()
            self._unary_waiting = 0
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
                action_B, scores_BA, hidden_out_BH, dt, refused = await self.decide_rows(obs_BO, prev_B, avail_BA,
                                                                                         hidden_BH)
            except RequestError as err:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(RequestError(err.code, str(err)))
                continue
            finally:
                self._running = False
            bad_B = refused.rows_R if refused is not None else None
            for i, p in enumerate(batch):
                if p.future.done():
                    continue
                if bad_B is not None and bad_B[i]:
                    p.future.set_exception(RequestError(refused.code, refused.why))  # type: ignore[union-attr]
                else:
                    p.future.set_result((int(action_B[i]), scores_BA[i], hidden_out_BH[i: i + 1], dt, len(batch)))
