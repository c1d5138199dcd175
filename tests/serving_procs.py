"""Test helpers for the runner and end-to-end tests: real `marlctl serve` processes on free ports, model dirs."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MARLCTL = [sys.executable, "-m", "marlctl.cli.app"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, deadline_s: float, what: str, period_s: float = 0.05, detail=None):
    """Poll ``condition()`` until it returns a truthy value (returned) or the deadline passes (AssertionError,
    with ``detail()`` appended when given)."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            extra = f" ({detail()})" if detail is not None else ""
            raise AssertionError(f"timed out after {deadline_s:.0f}s waiting for {what}{extra}")
        time.sleep(period_s)


def is_serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
        return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


@dataclass
class AgentProc:
    """One `marlctl serve` subprocess."""

    proc: subprocess.Popen
    address: str
    port: int
    metrics_port: int | None
    log: Path

    def kill(self) -> None:
        """SIGKILL (a crash: no drain)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_agent(model_dir: Path, index: int, log_dir: Path, port: int | None = None,
                metrics_port: int | None = None, wait: bool = True, deadline_s: float = 90.0) -> AgentProc:
    """Start `marlctl serve MODEL_DIR --agent I` on 127.0.0.1 and (``wait``) poll its health until SERVING."""
    port = port or free_port()
    cmd = [*MARLCTL, "serve", str(model_dir), "--agent", str(index), "--host", "127.0.0.1", "--port", str(port), "--grace", "1"]
    if metrics_port is not None:
        cmd += ["--metrics-port", str(metrics_port)]
    log = log_dir / f"agent{index}_{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    agent = AgentProc(proc, f"127.0.0.1:{port}", port, metrics_port, log)
    if wait:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"marlctl serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            return is_serving(agent.address)

        wait_until(up, deadline_s, f"agent {index} SERVING on {agent.address}", period_s=0.1)
    return agent


def export_random_team(env_id: str, out: Path, seed: int = 0, hidden_dim: int = 16) -> Path:
    """A real exported model dir for ``env_id`` from a randomly initialised (untrained) AgentNet."""
    import torch
    from marlctl.agents.export import export_team
    from marlctl.agents.recurrent import AgentNet, AgentNetConfig
    from marlctl.envs import env_spec

    @dataclass
    class Bundle:
        net: AgentNet
        env_id: str
        kind: str = "q"
        algo: str = "untrained"
        env_steps: int = 0
        checkpoint_path: str = "(random init, tests)"
        checkpoint_sha256: str = "0" * 64

    spec = env_spec(env_id)
    torch.manual_seed(seed)
    net = AgentNet(AgentNetConfig(obs_dim=spec.obs_dim, n_actions=spec.n_actions, n_agents=spec.n_agents,
                                  hidden_dim=hidden_dim))
    export_team(Bundle(net, env_id), out)
    return out
