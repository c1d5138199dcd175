"""Settings of one agent service (``marlctl serve`` builds a ``ServerConfig`` from its options)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from marlctl.serving.errors import AgentServiceError
from marlctl.serving.model import ModelConfig
from marlctl.serving.rows import OBS_GUARDS

BATCHING_MODES = ("auto", "loop", "thread", "off")


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
    unary_window_us: int = 2000
    """Longest a unary decision waits for the other live unary episodes' rows to share its ONNX Runtime call
    (``MicroBatcher.decide``; 0: no wait)."""
    loop_max_us: float = 250.0
    """``auto`` batches on the event loop when the warm-up's largest batch ran faster than this."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Device and ONNX Runtime thread settings."""
    obs_guard: str = "refuse"
    """``off`` | ``clip`` | ``refuse``: what to do with an observation outside the model's exported range widened
    by ``obs_margin`` (``serving.rows.ObsGuard``)."""
    obs_margin: float = 10.0
    """How far past its exported range a feature may go, in units of ``max(high - low, 1)``."""
    watch_s: float | None = None
    """Poll the model dir's manifest this often and roll out a changed model (None: only on SIGHUP)."""

    def __post_init__(self) -> None:
        if self.batching not in BATCHING_MODES:
            raise AgentServiceError(f"batching {self.batching!r} not valid: choose {', '.join(BATCHING_MODES)}")
        if self.max_episodes < 1 or self.max_batch < 1 or self.batch_window_us < 0 or self.unary_window_us < 0:
            raise AgentServiceError("max_episodes and max_batch must be >= 1, batch_window_us and unary_window_us >= 0")
        if self.idle_timeout_s <= 0 or self.grace_s < 0:
            raise AgentServiceError("idle_timeout_s must be > 0 and grace_s >= 0")
        if self.max_message_bytes < 1024:
            raise AgentServiceError(f"max_message_bytes {self.max_message_bytes} too small (>= 1024)")
        if self.obs_guard not in OBS_GUARDS:
            raise AgentServiceError(f"obs_guard {self.obs_guard!r} not valid: choose {', '.join(OBS_GUARDS)}")
        if not self.obs_margin >= 0:
            raise AgentServiceError(f"obs_margin must be >= 0, got {self.obs_margin}")
        if self.watch_s is not None and not self.watch_s > 0:
            raise AgentServiceError(f"watch interval must be > 0 seconds, got {self.watch_s}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise AgentServiceError("TLS needs both --tls-cert and --tls-key")
