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


def replace_opt(args: list[str], opt: str, value: str) -> list[str]:
    """``args`` with the value after ``opt`` replaced (the option must be there)."""
    out = list(args)
    out[out.index(opt) + 1] = value
    return out


@dataclass
class LiveTeam:
    """A rendered team run locally: each agent's and the runner's rendered container args, on localhost ports."""

    agent_addrs: list[str]
    agent_metrics_ports: list[int]
    runner_metrics_port: int
    procs: list[subprocess.Popen]
    logs: list[Path]

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_process(p)


def start_rendered_team(render_out: Path, model_dir: Path, work: Path, bin_dir: Path = VENV_BIN,
                        pacing_ms: float = 50.0) -> LiveTeam:
    """Start `marlctl serve` per agent and `marlctl run` with the args of the rendered Deployments and Job.

    Only what differs on a laptop is rewritten: the model path, bind host, ports and the agents'
    addresses; the runner plays (practically) forever, paced, until ``stop``.
    """
    import yaml

    team = LiveTeam([], [], 0, [], [])
    try:
        docs = [d for f in sorted(render_out.glob("agent-*.yaml")) for d in yaml.safe_load_all(f.read_text())]
        deployments = [d for d in docs if d["kind"] == "Deployment"]
        for i, dep in enumerate(deployments):
            args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
            port, mport = free_port(), free_port()
            args = [str(model_dir) if a in ("/models", "/opt/marlctl/model") else a for a in args]
            args = replace_opt(replace_opt(replace_opt(args, "--host", "127.0.0.1"), "--port", str(port)),
                               "--metrics-port", str(mport))
            log = work / f"agent-{i}.log"
            team.procs.append(start_process(marlctl_cmd(bin_dir) + args, log))
            team.logs.append(log)
            team.agent_addrs.append(f"127.0.0.1:{port}")
            team.agent_metrics_ports.append(mport)
        for addr in team.agent_addrs:
            poll(f"{addr} SERVING", lambda a=addr: grpc_serving(a), 90, team.procs, team.logs)
        job = yaml.safe_load((render_out / "runner-job.yaml").read_text())
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        team.runner_metrics_port = free_port()
        args = replace_opt(args, "--agents", ",".join(team.agent_addrs))
        args = replace_opt(replace_opt(args, "--metrics-port", str(team.runner_metrics_port)), "--episodes", "1000000")
        log = work / "runner.log"
        team.procs.append(start_process(marlctl_cmd(bin_dir) + args + ["--step-interval-ms", str(pacing_ms)], log))
        team.logs.append(log)
    except BaseException:
        team.stop()
        raise
    return team
