"""Every Prometheus metric of the serving side (agent server and episode runner), defined once.

Names and labels are the contract in DESIGN.md, "Metrics". Each process builds its metrics on
its own ``CollectorRegistry`` (no global default registry, so tests and several servers in one
process never collide) and exposes it with ``start_metrics_http``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Decisions of a small agent network take tens of microseconds: buckets from 25 us to 1 s.
LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 200e-6, 350e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 50e-3,
                   0.1, 0.25, 0.5, 1.0)
STEP_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RETURN_BUCKETS = (-100.0, -20.0, -10.0, -5.0, -1.0, 0.0, 1.0, 2.0, 5.0, 8.0, 10.0, 20.0, 50.0, 100.0, 500.0)


@dataclass
class ServerMetrics:
    """The agent server's metrics, on their own registry."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.decisions_total = Counter(
            "marl_agent_decisions_total", "Decisions answered, by gRPC status code",
            ["agent", "model", "code"], registry=r)
        self.decision_seconds = Histogram(
            "marl_agent_decision_seconds", "Request in to decision out, inside the server",
            ["agent"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "marl_agent_inference_seconds", "ONNX Runtime call time (one call may serve a micro-batch)",
            ["agent"], buckets=LATENCY_BUCKETS, registry=r)
        self.live_episodes = Gauge(
            "marl_agent_live_episodes", "Episodes holding server-side state (streams + unary)",
            ["agent"], registry=r)
        self.model_info = Gauge(
            "marl_agent_model_info", "Each model version this agent service runs episodes on (value always 1; "
            "two while a rollout's old version still has live episodes)",
            ["agent", "algo", "sha256", "version"], registry=r)
        self.rollouts_total = Counter(
            "marl_agent_rollouts_total", "Model rollouts (reload, --watch, rollback) by result: ok or refused",
            ["agent", "result"], registry=r)


@dataclass
class RunnerMetrics:
    """The episode runner's metrics, on their own registry."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.episodes_total = Counter(
            "marl_runner_episodes_total", "Episodes finished, by outcome (won, lost, truncated, failed, ...)",
            ["env", "result"], registry=r)
        self.episode_return = Histogram(
            "marl_runner_episode_return", "Undiscounted team return per episode",
            ["env"], buckets=RETURN_BUCKETS, registry=r)
        self.step_seconds = Histogram(
            "marl_runner_step_seconds", "One joint step: every agent's decision plus the env step",
            ["env"], buckets=STEP_BUCKETS, registry=r)
        self.fallbacks_total = Counter(
            "marl_runner_fallbacks_total", "Decisions replaced by the fallback policy, by reason",
            ["agent", "reason"], registry=r)


def start_metrics_http(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> Any:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread; returns the HTTP server
    (call ``.shutdown()`` to stop). Port 0 picks a free port (``server.server_port``)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def observe_many(histogram: Any, amount: float, count: int) -> None:
    """``count`` observations of the same ``amount`` on a labelled histogram child, in O(1) (a batch of
    decisions shares one request-to-decision time). Uses prometheus_client's bucket counters directly and
    falls back to ``count`` single observations if their layout ever changes."""
    if count <= 0:
        return
    try:
        bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:  # pragma: no cover - depends on the prometheus_client version
        for _ in range(count):
            histogram.observe(amount)
        return
    total.inc(amount * count)
    for bound, bucket in zip(bounds, buckets, strict=True):
        if amount <= bound:
            bucket.inc(count)
            break
