"""Helpers shared by the deploy tests: a tiny exported team, free ports, real `marlctl` processes, polling."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")


@dataclass
class TinyBundle:
    """What `agents.export.export_team` needs from a trained run, built from a fresh AgentNet."""

    net: Any
    kind: str
    algo: str
    env_id: str
    env_steps: int
    checkpoint_path: str
    checkpoint_sha256: str


def make_model_dir(out_dir: Path, env_id: str = "matrix:qtran", seed: int = 0) -> Path:
    """Export a freshly built (untrained, seeded) AgentNet for ``env_id`` with the real exporter."""
    import torch
    from marlctl.agents.export import ExportConfig, export_team
    from marlctl.agents.recurrent import AgentNet, AgentNetConfig
    from marlctl.envs import env_spec

    spec = env_spec(env_id)
    torch.manual_seed(seed)
    net = AgentNet(AgentNetConfig(obs_dim=spec.obs_dim, n_actions=spec.n_actions, n_agents=spec.n_agents, hidden_dim=16))
    bundle = TinyBundle(net=net, kind="q", algo="qtran-base", env_id=env_id, env_steps=0,
                        checkpoint_path="fresh-agentnet", checkpoint_sha256="0" * 64)
    export_team(bundle, out_dir, config=ExportConfig(verify_episodes=1, seed=seed))
    return out_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marlctl_cmd(bin_dir: Path = VENV_BIN) -> list[str]:
    return [str(bin_dir / "marlctl")]


def start_process(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a real process with stdout+stderr to ``log_path`` (read it when a test fails)."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed by stop_process
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=log_path.parent)
    proc._marl_log = log  # type: ignore[attr-defined]
    return proc


def stop_process(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    log = getattr(proc, "_marl_log", None)
    if log is not None:
        log.close()


def poll(what: str, fn: Callable[[], T | None], deadline_s: float, procs: list[subprocess.Popen] = (),
         logs: list[Path] = (), interval_s: float = 0.2) -> T:
    """Call ``fn`` until it returns something truthy or the deadline passes (then fail with the logs)."""
    end = time.monotonic() + deadline_s
    last_exc: BaseException | None = None
    while time.monotonic() < end:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process {p.args} exited with {p.returncode}\n{_tails(logs)}")
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(f"{what}: not reached within {deadline_s}s (last error: {last_exc!r})\n{_tails(logs)}")


def _tails(logs: list[Path]) -> str:
    out = []
    for p in logs:
        if Path(p).exists():
            out.append(f"--- {p} ---\n" + Path(p).read_text(errors="replace")[-3000:])
    return "\n".join(out)


def grpc_serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def http_get(url: str, timeout_s: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - local test URL
        return resp.read().decode()


def metric_families(text: str) -> dict[str, Any]:
    """Prometheus text exposition -> {family name: family} (counters keep their ``_total`` name)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        out[name] = fam
    return out
