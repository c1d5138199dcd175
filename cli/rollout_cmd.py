"""`marlctl rollout`: roll a team of local agent services onto the model in their model dir, or back.

Each agent service (``marlctl serve``, alone or under ``serve-team``) re-verifies its model dir on
SIGHUP and rolls back to the previous version it keeps in memory on SIGUSR1; live episodes finish on
the version they started with (``serving.server``). This command checks MODEL_DIR first (the same
torch-free verifier serve uses), finds the process listening at each ``--agents`` address on this
machine, signals it, and waits until its ``GetSpec`` reports the new version. A service that refuses
the new model keeps serving the old one and says why in its log and in
``marl_agent_rollouts_total{result="refused"}``; this command then exits 1 naming it. Services on
other machines (Kubernetes): run them with ``serve --watch`` and swap the mounted model dir.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import typer
from marlctl.cli.common import console, err_console, handle_user_errors


def listening_pid(port: int) -> int | None:
    """The pid of the local process with a TCP socket listening on ``port`` (Linux /proc), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def _spec(address: str):  # noqa: ANN202 - AgentSpec
    import grpc
    from marlctl.proto import agent_pb2, agent_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        return agent_pb2_grpc.AgentServiceStub(ch).GetSpec(agent_pb2.GetSpecRequest(), timeout=5)


def rollout(
    model_dir: Path = typer.Argument(..., help="The model dir the agents serve, now holding the new version."),
    agents: str = typer.Option(..., "--agents", help="host:port of each agent service, comma-separated, in order."),
    rollback: bool = typer.Option(False, "--rollback", help="Return each agent to its previous version instead."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for each agent to answer the signal."),
) -> None:
    """Roll the agent services at --agents onto MODEL_DIR's model (or --rollback), without dropping an episode."""
    import grpc
    from marlctl.serving.errors import AgentServiceError
    from marlctl.serving.modeldir import verify_model_dir

    addresses = [a.strip() for a in agents.split(",") if a.strip()]
    if not addresses:
        raise AgentServiceError("--agents is empty: give one host:port per agent, comma-separated")
    want = None
    if not rollback:
        info = verify_model_dir(model_dir)
        if info.n_agents != len(addresses):
            raise AgentServiceError(f"{model_dir} holds {info.n_agents} agents but --agents lists {len(addresses)}")
        want = info.version
    targets = []
    for i, address in enumerate(addresses):
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise AgentServiceError(f"agent address {address!r} is not host:port")
        try:
            spec = _spec(address)
        except grpc.RpcError as exc:
            raise AgentServiceError(f"agent service {address} does not answer GetSpec: {exc.code().name}") from None
        if spec.agent_index != i:
            raise AgentServiceError(f"{address} serves agent {spec.agent_index}, but it is agent {i} in --agents")
        pid = listening_pid(int(port))
        if pid is None:
            raise AgentServiceError(
                f"no process on this machine listens on port {port} ({address}): roll out a remote service by "
                "swapping its model dir under `marlctl serve --watch`, or send its process SIGHUP")
        targets.append((address, pid, spec))
    for _address, pid, _ in targets:
        os.kill(pid, signal.SIGUSR1 if rollback else signal.SIGHUP)
    failed = []
    for address, _, before in targets:
        deadline = time.monotonic() + timeout
        now = before
        while now.rollout_attempts == before.rollout_attempts and time.monotonic() < deadline:
            time.sleep(0.1)
            now = _spec(address)
        line = f"{address}: {before.model_version} -> {now.model_version}"
        if now.rollout_attempts == before.rollout_attempts:
            failed.append(address)
            err_console.print(f"{line}: no answer to the signal within {timeout:g}s", highlight=False)
        elif now.rollout_refusal:
            failed.append(address)
            err_console.print(f"{line}: refused, the old version keeps serving: {now.rollout_refusal}",
                              highlight=False)
        elif want is not None and now.model_version != want:
            failed.append(address)
            err_console.print(f"{line}: serves {now.model_version}, not {want} (is MODEL_DIR the dir it serves?)",
                              highlight=False)
        else:
            same = now.model_version == before.model_version
            console.print(line + (" (already)" if same else ""), highlight=False)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `rollout`."""
    app.command("rollout")(handle_user_errors(rollout))
