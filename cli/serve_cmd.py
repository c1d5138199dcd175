"""`marlctl serve` (one agent service) and `marlctl serve-team` (one process per agent, consecutive ports)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import typer
from marlctl.cli.common import console, err_console, handle_user_errors

HEALTH_TIMEOUT_S = 120.0


def _log_setup(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def serve(
    model_dir: Path = typer.Argument(..., help="Model dir written by `marlctl export`."),
    agent: int = typer.Option(..., "--agent", help="Index of the agent this service runs."),
    host: str = typer.Option("0.0.0.0", help="Address to bind."),
    port: int = typer.Option(50051, help="gRPC port (0 = any free port)."),
    metrics_port: int | None = typer.Option(None, help="Prometheus /metrics port (off when not given)."),
    tls_cert: Path | None = typer.Option(None, help="PEM certificate chain (TLS with --tls-key)."),
    tls_key: Path | None = typer.Option(None, help="PEM private key."),
    max_episodes: int = typer.Option(1024, help="Bound on live episodes (streams + unary)."),
    idle_timeout: float = typer.Option(60.0, help="Seconds after which an idle unary episode is dropped."),
    max_message_bytes: int = typer.Option(4 * 1024 * 1024, help="Largest gRPC message accepted or sent."),
    grace: float = typer.Option(30.0, help="On SIGTERM, seconds live episodes may go on before they are ended."),
    batching: str = typer.Option("auto", help="Micro-batching of concurrent episodes: auto, loop, thread or off."),
    max_batch: int = typer.Option(256, help="Most decisions in one ONNX Runtime call."),
    batch_window_us: int = typer.Option(0, help="Extra microseconds a batch waits for more requests (0: none)."),
    unary_window_us: int = typer.Option(2000, help="Longest a unary decision waits for the other live unary "
                                        "episodes to share its ONNX Runtime call (0: none)."),
    device: str = typer.Option("auto", help="auto (CUDA when it loads, else CPU), cpu or cuda."),
    obs_guard: str = typer.Option("refuse", help="Observations far outside the range the model was exported for: "
                                  "refuse (INVALID_ARGUMENT), clip, or off."),
    obs_margin: float = typer.Option(10.0, help="How far outside its exported range a feature may go, in units of "
                                     "max(high - low, 1)."),
    watch: float | None = typer.Option(None, help="Poll the model dir's manifest every WATCH seconds and roll out a "
                                       "changed model (SIGHUP always does)."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Serve one agent's ONNX policy over gRPC until SIGTERM/Ctrl-C (then drain and exit).

    SIGHUP (or --watch) rolls out the model dir's new version without a restart: live episodes finish on
    theirs, new episodes get the new one; SIGUSR1 rolls back to the previous version."""
    import asyncio

    from marlctl.serving.model import ModelConfig, read_manifest
    from marlctl.serving.server import ServerConfig
    from marlctl.serving.server import serve as run_server

    _log_setup(log_level)
    read_manifest(model_dir)  # fail fast, before binding, on a wrong path
    config = ServerConfig(
        model_dir=model_dir, agent_index=agent, host=host, port=port, metrics_port=metrics_port,
        max_episodes=max_episodes, idle_timeout_s=idle_timeout, max_message_bytes=max_message_bytes,
        tls_cert=tls_cert, tls_key=tls_key, grace_s=grace, batching=batching, max_batch=max_batch,
        batch_window_us=batch_window_us, unary_window_us=unary_window_us, model=ModelConfig(device=device),
        obs_guard=obs_guard,
        obs_margin=obs_margin, watch_s=watch)

    def ready(server) -> None:  # noqa: ANN001 - AgentServer, imported lazily
        metrics = f", metrics :{server.metrics_port}/metrics" if server.metrics_port is not None else ""
        m = server.servicer.model
        console.print(f"agent {agent} of {m.manifest['env_id']} ({m.manifest['algorithm']}) version {m.version} "
                      f"SERVING on {host}:{server.port}{metrics} [{m.provider}]", highlight=False)

    asyncio.run(run_server(config, ready))


def _healthy(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def _stop_all(procs: list[subprocess.Popen], grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace + 10.0
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def serve_team(
    model_dir: Path = typer.Argument(..., help="Model dir written by `marlctl export`."),
    host: str = typer.Option("127.0.0.1", help="Address every agent binds (and the health checks use)."),
    base_port: int = typer.Option(50051, help="Agent i serves on base-port + i."),
    metrics_base_port: int | None = typer.Option(None, help="Agent i exposes metrics on this + i."),
    max_episodes: int = typer.Option(1024, help="Per agent: bound on live episodes."),
    grace: float = typer.Option(30.0, help="Per agent: drain grace period on stop."),
    batching: str = typer.Option("auto", help="auto, loop, thread or off."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    log_level: str = typer.Option("warning", help="Log level of the agent processes."),
) -> None:
    """Start one `marlctl serve` process per agent on consecutive ports; stop them all on Ctrl-C/SIGTERM.

    SIGHUP / SIGUSR1 are passed to every agent (roll out the model dir's new version / roll back)."""
    from marlctl.serving.errors import AgentServiceError
    from marlctl.serving.model import read_manifest
    from rich.table import Table

    manifest = read_manifest(model_dir)
    n = manifest["n_agents"]
    procs: list[subprocess.Popen] = []
    stop = {"requested": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["requested"] = True

    def forward(signum: int, _frame: object) -> None:  # SIGHUP: roll out, SIGUSR1: roll back (each agent)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    old.update({s: signal.signal(s, forward) for s in (signal.SIGHUP, signal.SIGUSR1)})
    try:
        for i in range(n):
            cmd = [sys.executable, "-m", "marlctl.cli.app", "serve", str(model_dir), "--agent", str(i),
                   "--host", host, "--port", str(base_port + i), "--max-episodes", str(max_episodes),
                   "--grace", str(grace), "--batching", batching, "--device", device, "--log-level", log_level]
            if metrics_base_port is not None:
                cmd += ["--metrics-port", str(metrics_base_port + i)]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True))
        pending = set(range(n))
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while pending and not stop["requested"]:
            for i in sorted(pending):
                if procs[i].poll() is not None:
                    raise AgentServiceError(
                        f"agent {i} exited with code {procs[i].returncode} before becoming healthy "
                        f"(see its log above; port {base_port + i} in use?)")
                if _healthy(f"{host}:{base_port + i}"):
                    pending.discard(i)
            if time.monotonic() > deadline:
                raise AgentServiceError(f"agents {sorted(pending)} not healthy after {HEALTH_TIMEOUT_S:.0f}s")
            time.sleep(0.1)
        table = Table(title=f"{manifest['env_id']} team ({manifest['algorithm']}), {n} agents")
        for col in ("agent", "address", "metrics", "pid"):
            table.add_column(col)
        for i, p in enumerate(procs):
            metrics = f"{host}:{metrics_base_port + i}" if metrics_base_port is not None else "-"
            table.add_row(str(i), f"{host}:{base_port + i}", metrics, str(p.pid))
        console.print(table)
        console.print("all agents SERVING; Ctrl-C or SIGTERM stops the team", highlight=False)
        while not stop["requested"]:
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    raise AgentServiceError(f"agent {i} (pid {p.pid}) exited with code {p.returncode}; stopping the team")
            time.sleep(0.2)
        err_console.print("stopping the team (draining each agent)")
    finally:
        _stop_all(procs, grace)
        for s, h in old.items():
            signal.signal(s, h)


def register(app: typer.Typer) -> None:
    """Add `serve` and `serve-team`."""
    app.command("serve")(handle_user_errors(serve))
    app.command("serve-team")(handle_user_errors(serve_team))
