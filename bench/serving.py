"""Serving benchmark: decision latency and throughput of the agent service vs in-process baselines.

Systems: our service (``marlctl serve``: a stream per episode, the multiplexed ``Episodes`` stream the
runner uses with ``--transport multiplex``, and unary; batching modes), in-process ONNX Runtime,
in-process PyTorch, a bare ``grpc.aio`` echo stream and unary echo (no model: the floor of any Python
gRPC stream or unary server here), and a plain gRPC server calling PyTorch per request (the sync ``grpc.server`` + thread pool a
user would write first). Servers run as separate processes, pinned to core 0 (``--no-pin`` to let
the OS place them); the client is one ``grpc.aio`` process on the other cores with K concurrent
episodes (each a 100-step episode loop: observation out, decision back, next observation).
In-process baselines at K concurrent episodes run one batched call of K rows per step. Writes
``bench/results/serving.{json,md}``.

    python bench/serving.py [--seconds 2] [--concurrency 1,16,64,256] [--repeat 3]

Bounded: about (#systems x #concurrency x seconds) plus server start-ups; ~3-5 minutes per round by default.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from marlctl.agents.files import atomic_write_text

ENV_ID = "predator_prey:agents=3,prey=2,grid=7"  # obs 77, 6 actions, 3 agents: a realistic small agent
HIDDEN = 64
EPISODE_LEN = 100
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Cell:
    system: str
    concurrency: int
    decisions_per_s: float
    p50_us: float
    p99_us: float
    decisions: int
    server_cpu_us: float = float("nan")
    """CPU time (user + system, all threads) the serving process spent per decision: the load-independent
    cost. 1e6 / server_cpu_us = decisions/s one dedicated core could serve."""
    rows_per_message: float = 1.0
    """Decisions per gRPC message (the multiplexed stream batches episodes' rows on the client)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_team(workdir: Path) -> tuple[Path, Path]:
    """A deterministic checkpoint (contract format) and its exported model dir."""
    import torch
    from marlctl.agents.export import ExportConfig, export_team
    from marlctl.agents.recurrent import AgentNet, AgentNetConfig
    from marlctl.envs import env_spec

    spec = env_spec(ENV_ID)
    torch.manual_seed(0)
    net = AgentNet(AgentNetConfig(obs_dim=spec.obs_dim, n_actions=spec.n_actions, n_agents=spec.n_agents,
                                  hidden_dim=HIDDEN))
    ckpt = {"format": "marlctl.checkpoint", "version": 1, "algo": "qtran-base", "env_id": ENV_ID,
            "env_spec": spec.to_dict(), "env_steps": 0, "seed": 0,
            "agent": {"kind": "q", "config": net.config.to_dict(), "state_dict": net.state_dict()},
            "algorithm": {}, "run": {}, "config": {}}
    path = workdir / "checkpoints" / "latest.pt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    model_dir = workdir / "model"
    export_team(path, model_dir, config=ExportConfig(verify_episodes=1, verify_max_steps=50))
    return path, model_dir


def episode_data(obs_dim: int, n_actions: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs_TO = rng.standard_normal((EPISODE_LEN, obs_dim)).astype(np.float32)
    avail_TA = rng.random((EPISODE_LEN, n_actions)) < 0.8
    avail_TA[:, 4] = True
    return obs_TO, avail_TA


# ---- the naive server: sync grpc.server + thread pool + PyTorch per request -------------------------
def naive_server(checkpoint: str, port: int) -> None:
    import grpc
    import torch
    from marlctl.agents.bundle import load_agent_bundle
    from marlctl.agents.recurrent import GreedyAgentPolicy
    from marlctl.proto import agent_pb2, agent_pb2_grpc

    torch.set_num_threads(1)
    bundle = load_agent_bundle(checkpoint)
    policy = GreedyAgentPolicy(bundle.net, 0).eval()
    states: dict[str, tuple[torch.Tensor, int]] = {}

    def decide(obs, avail, hidden, prev):  # noqa: ANN001, ANN202
        with torch.no_grad():
            a, q, h = policy(torch.tensor([list(obs)]), torch.tensor([prev]), torch.tensor([list(avail)]), hidden)
        return int(a[0]), q[0].tolist(), h

    class Naive(agent_pb2_grpc.AgentServiceServicer):
        def Episode(self, request_iterator, context):  # noqa: ANN001, ANN201, N802
            hidden, prev = bundle.net.initial_hidden(1), -1
            for step, msg in enumerate(request_iterator):
                prev, scores, hidden = decide(msg.obs, msg.avail_actions, hidden, prev)
                yield agent_pb2.Decision(action=prev, scores=scores, step=step)

        def Decide(self, request, context):  # noqa: ANN001, ANN201, N802
            if not request.HasField("observation"):
                states.pop(request.episode_id, None)
                return agent_pb2.Decision(action=-1)
            hidden, prev = (bundle.net.initial_hidden(1), -1) if request.start else states[request.episode_id]
            a, scores, hidden = decide(request.observation.obs, request.observation.avail_actions, hidden, prev)
            if request.end:
                states.pop(request.episode_id, None)
            else:
                states[request.episode_id] = (hidden, a)
            return agent_pb2.Decision(action=a, scores=scores)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=300))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(Naive(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()


# ---- the floor: a raw-bytes grpc.aio echo stream (no model, no decoding) ----------------------------
def echo_server(port: int) -> None:
    """What any Python grpc.aio stream costs per message on this machine: the service our stream is built on,
    with nothing in it."""
    import grpc

    async def episode(request_iterator, context):  # noqa: ANN001, ANN202
        while (raw := await context.read()) is not grpc.aio.EOF:
            await context.write(raw)

    async def decide(request, context):  # noqa: ANN001, ANN202
        return b"\x08\x01"  # Decision(action=1): the unary floor answers without decoding anything

    async def serve() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Episode": grpc.stream_stream_rpc_method_handler(episode),
                           "Decide": grpc.unary_unary_rpc_method_handler(decide)})
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("READY", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


# ---- clients --------------------------------------------------------------------------------------
async def _client(target: str, mode: str, concurrency: int, seconds: float, obs_TO, avail_TA) -> Cell:
    import grpc
    from marlctl.proto import agent_pb2, agent_pb2_grpc

    msgs = [agent_pb2.Observation(obs=o.tolist(), avail_actions=a.tolist()) for o, a in zip(obs_TO, avail_TA, strict=True)]
    lat: list[float] = []
    counts = [0] * concurrency
    async with grpc.aio.insecure_channel(target) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        warm_until = time.perf_counter() + min(0.5, seconds / 4)
        stop_at = warm_until + seconds

        echo = ch.stream_stream("/bench.Echo/Episode", request_serializer=agent_pb2.Observation.SerializeToString)
        decide = stub.Decide if mode == "unary" else ch.unary_unary(
            "/bench.Echo/Decide", request_serializer=agent_pb2.DecideRequest.SerializeToString,
            response_deserializer=agent_pb2.Decision.FromString)

        async def stream_worker(k: int) -> None:
            while time.perf_counter() < stop_at:
                call = echo() if mode == "echo" else stub.Episode()
                for m in msgs:
                    t0 = time.perf_counter()
                    await call.write(m)
                    await call.read()
                    t1 = time.perf_counter()
                    if t0 > warm_until and t1 < stop_at:
                        lat.append(t1 - t0)
                        counts[k] += 1
                    if t1 >= stop_at:
                        break
                await call.done_writing()
                await call.code()

        async def unary_worker(k: int) -> None:
            e = 0
            while time.perf_counter() < stop_at:
                eid = f"w{k}-e{e}"
                e += 1
                for t, m in enumerate(msgs):
                    t0 = time.perf_counter()
                    await decide(agent_pb2.DecideRequest(episode_id=eid, start=t == 0, end=t == len(msgs) - 1,
                                                         observation=m))
                    t1 = time.perf_counter()
                    if t0 > warm_until and t1 < stop_at:
                        lat.append(t1 - t0)
                        counts[k] += 1
                    if t1 >= stop_at:
                        if t != len(msgs) - 1:
                            await decide(agent_pb2.DecideRequest(episode_id=eid, end=True))
                        break

        mux = None
        if mode == "multiplex":
            from marlctl.serving.multiplex import AgentMux

            spec = await stub.GetSpec(agent_pb2.GetSpecRequest())
            mux = AgentMux(ch, stub, 0, 5.0, spec.max_episodes, lambda _spec: None)

        async def multiplex_worker(k: int) -> None:  # the runner's path: one shared stream, rows batched
            while time.perf_counter() < stop_at:
                slot = mux.open_slot()
                for o, a in zip(obs_TO, avail_TA, strict=True):
                    t0 = time.perf_counter()
                    action, _, reason, _ = await mux.decide(slot, o, a)
                    t1 = time.perf_counter()
                    if reason is not None:
                        raise RuntimeError(f"multiplexed decision failed: {reason}")
                    if t0 > warm_until and t1 < stop_at:
                        lat.append(t1 - t0)
                        counts[k] += 1
                    if t1 >= stop_at:
                        break
                mux.close_slot(slot)

        worker = {"stream": stream_worker, "echo": stream_worker, "unary": unary_worker, "echo-unary": unary_worker,
                  "multiplex": multiplex_worker}[mode]
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        if mux is not None:
            await mux.close()
    n = sum(counts)
    lat_us = np.array(lat) * 1e6
    cell = Cell("", concurrency, n / seconds, float(np.percentile(lat_us, 50)), float(np.percentile(lat_us, 99)), n)
    if mux is not None:
        cell.rows_per_message = mux.rows / max(mux.messages, 1)
    return cell


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_service(target: str, mode: str, concurrency: int, seconds: float, obs_TO, avail_TA,
                  server_pid: int | None = None) -> Cell:
    cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
    cell = asyncio.run(_client(target, mode, concurrency, seconds, obs_TO, avail_TA))
    if server_pid:
        # includes the warm-up part and the episode starts/ends, so it slightly overstates the per-decision cost
        cell.server_cpu_us = (cpu_seconds(server_pid) - cpu0) * 1e6 / max(cell.decisions, 1)
    return cell


def bench_in_process(kind: str, model_dir: Path, checkpoint: Path, concurrency: int, seconds: float,
                     obs_TO, avail_TA) -> Cell:
    """K episodes stepped together: one batched call of K rows per step (hidden carried)."""
    K = concurrency
    obs_KTO = np.repeat(obs_TO[None], K, 0)
    avail_KTA = np.repeat(avail_TA[None], K, 0)
    if kind == "onnxruntime":
        from marlctl.serving.model import load_agent_model

        model = load_agent_model(model_dir, 0)
        hidden = model.initial_hidden(K)

        def step(t: int, prev, hidden):  # noqa: ANN001, ANN202
            a, _, h = model.infer(obs_KTO[:, t], prev, avail_KTA[:, t], hidden)
            return a, h
    else:
        import torch
        from marlctl.agents.bundle import load_agent_bundle
        from marlctl.agents.recurrent import GreedyAgentPolicy

        torch.set_num_threads(1)
        bundle = load_agent_bundle(checkpoint)
        policy = GreedyAgentPolicy(bundle.net, 0).eval()
        hidden = bundle.net.initial_hidden(K)

        def step(t: int, prev, hidden):  # noqa: ANN001, ANN202
            with torch.no_grad():
                a, _, h = policy(torch.from_numpy(obs_KTO[:, t]), torch.from_numpy(prev),
                                 torch.from_numpy(avail_KTA[:, t]), hidden)
            return a.numpy(), h

    lat: list[float] = []
    n = 0
    cpu0 = time.process_time()
    prev = np.full(K, -1, np.int64)
    warm_until = time.perf_counter() + min(0.5, seconds / 4)
    stop_at = warm_until + seconds
    t = 0
    while True:
        t0 = time.perf_counter()
        prev, hidden = step(t, prev, hidden)
        t1 = time.perf_counter()
        if t1 >= stop_at:
            break
        if t0 > warm_until:
            lat.append(t1 - t0)
            n += K
        t = (t + 1) % EPISODE_LEN
        if t == 0:
            prev = np.full(K, -1, np.int64)
    lat_us = np.array(lat) * 1e6
    cpu_us = (time.process_time() - cpu0) * 1e6 / max(n, 1)
    return Cell(kind, K, n / seconds, float(np.percentile(lat_us, 50)), float(np.percentile(lat_us, 99)), n, cpu_us)


SERVER_CPUS: set[int] | None = None
"""With --pin: the cores server processes are confined to (the client keeps the others)."""


def start_process(cmd: list[str], target: str, ready_timeout: float = 120.0) -> subprocess.Popen:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from marlctl.proto import agent_pb2, agent_pb2_grpc

    cpus = SERVER_CPUS
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    deadline = time.monotonic() + ready_timeout
    with grpc.insecure_channel(target) as ch:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode}")
            try:  # our server: health SERVING; the naive server has no health service, so GetSpec/Decide probe
                if health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return proc
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    try:
                        agent_pb2_grpc.AgentServiceStub(ch).GetSpec(agent_pb2.GetSpecRequest(), timeout=1)
                    except grpc.RpcError as exc2:
                        if exc2.code() == grpc.StatusCode.UNIMPLEMENTED:
                            return proc
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{cmd} not ready after {ready_timeout}s")


def stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="measured seconds per cell")
    ap.add_argument("--concurrency", default="1,16,64,256", help="concurrent episodes per cell")
    ap.add_argument("--modes", default="auto,loop,thread,off", help="batching modes of our server to measure (stream)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds over every system; each figure is the median over the rounds")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="let the OS place client and server (default: server on core 0, client on the other cores, "
                         "as when each agent pod has its own CPU)")
    ap.add_argument("--naive-server", nargs=2, metavar=("CHECKPOINT", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--render", action="store_true", help="only re-render serving.md from serving.json")
    args = ap.parse_args()
    if args.render:
        render_saved(RESULTS / "serving.json")
        return
    if args.naive_server:
        naive_server(args.naive_server[0], int(args.naive_server[1]))
        return
    if args.echo_server:
        echo_server(args.echo_server)
        return
    global SERVER_CPUS
    cores = sorted(os.sched_getaffinity(0))
    args.pin = args.pin and len(cores) >= 2
    if args.pin:
        SERVER_CPUS = {cores[0]}
        os.sched_setaffinity(0, set(cores[1:]))
    Ks = [int(k) for k in args.concurrency.split(",")]
    modes = args.modes.split(",")
    cells: list[Cell] = []

    def record(system: str, cell: Cell) -> None:
        cell.system = system
        cells.append(cell)
        print(f"{system:28s} K={cell.concurrency:<4d} {cell.decisions_per_s:10.0f} dec/s  "
              f"p50 {cell.p50_us:8.1f} us  p99 {cell.p99_us:8.1f} us  server CPU {cell.server_cpu_us:7.1f} us/decision",
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, model_dir = make_team(Path(tmp))
        manifest = json.loads((model_dir / "manifest.json").read_text())
        obs_TO, avail_TA = episode_data(manifest["obs_dim"], manifest["n_actions"])
        servers = [(f"marlctl serve {{}} ({mode})", ("stream", "multiplex", "unary") if mode == "auto" else ("stream",),
                    [sys.executable, "-m", "marlctl.cli.app", "serve", str(model_dir), "--agent", "0", "--host",
                     "127.0.0.1", "--port", "{port}", "--batching", mode, "--log-level", "error", "--grace", "1"])
                   for mode in modes]
        servers.append(("bare grpc.aio {} (floor)", ("echo", "echo-unary"), [sys.executable, __file__, "--echo-server",
                                                                          "{port}"]))
        servers.append(("plain gRPC + PyTorch {}", ("stream", "unary"),
                        [sys.executable, __file__, "--naive-server", str(checkpoint), "{port}"]))
        for rnd in range(args.repeat):  # rounds: every system once per round, so slow drifts of the load hit all
            if args.repeat > 1:
                print(f"-- round {rnd + 1} of {args.repeat}", flush=True)
            for kind in ("onnxruntime", "pytorch"):
                for K in Ks:
                    record(f"in-process {kind}",
                           bench_in_process(kind, model_dir, checkpoint, K, args.seconds, obs_TO, avail_TA))
            for label, calls, cmd in servers:
                port = free_port()
                proc = start_process([c.replace("{port}", str(port)) for c in cmd], f"127.0.0.1:{port}")
                try:
                    for call in calls:
                        for K in Ks:
                            cell = bench_service(f"127.0.0.1:{port}", call, K, args.seconds, obs_TO, avail_TA, proc.pid)
                            record(label.format({"echo": "echo stream", "echo-unary": "unary echo"}.get(call, call)), cell)
                finally:
                    stop_process(proc)
    write_results(median_cells(cells), args, manifest)


def render_saved(path: Path) -> None:
    """Re-render ``serving.md`` from a saved ``serving.json`` (``--render``)."""
    data = json.loads(path.read_text())
    fields = ("system", "concurrency", "decisions_per_s", "p50_us", "p99_us", "decisions", "server_cpu_us",
              "rows_per_message")
    cells = [Cell(*(c[f] for f in fields)) for c in data["cells"]]
    meta = data["meta"]
    args = argparse.Namespace(seconds=meta["seconds_per_cell"], pin=meta.get("pinned", False),
                              repeat=meta.get("rounds", 1), date=meta["date"])
    write_results(cells, args, {k: meta[k] for k in ("obs_dim", "n_actions", "hidden_dim")})


def median_cells(cells: list[Cell]) -> list[Cell]:
    """One cell per (system, K): the median of each figure over the rounds (first-seen order)."""
    groups: dict[tuple[str, int], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.system, c.concurrency), []).append(c)
    out = []
    for (system, k), cs in groups.items():
        med = {f: float(np.median([getattr(c, f) for c in cs]))
               for f in ("decisions_per_s", "p50_us", "p99_us", "server_cpu_us", "rows_per_message")}
        out.append(Cell(system, k, med["decisions_per_s"], med["p50_us"], med["p99_us"],
                        int(np.median([c.decisions for c in cs])), med["server_cpu_us"], med["rows_per_message"]))
        out[-1].rounds = len(cs)  # type: ignore[attr-defined]
    return out


def write_results(cells: list[Cell], args: argparse.Namespace, manifest: dict) -> None:
    import onnxruntime
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    ort_by_k = {c.concurrency: c for c in cells if c.system == "in-process onnxruntime"}
    meta = {
        "date": getattr(args, "date", None) or datetime.now(UTC).isoformat(timespec="seconds"), "env_id": ENV_ID, "obs_dim": manifest["obs_dim"],
        "n_actions": manifest["n_actions"], "hidden_dim": manifest["hidden_dim"], "seconds_per_cell": args.seconds,
        "episode_len": EPISODE_LEN, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
        "pinned": bool(args.pin), "rounds": args.repeat,
        "note": ("server process pinned to core 0, client (one Python grpc.aio process) to the other cores"
                 if args.pin else "client and server share the machine's cores; the client is one Python grpc.aio process"),
    }
    data = {"meta": meta, "cells": [c.__dict__ for c in cells]}
    atomic_write_text(RESULTS / "serving.json", json.dumps(data, indent=2) + "\n")
    Ks = sorted({c.concurrency for c in cells})
    systems = list(dict.fromkeys(c.system for c in cells))
    by = {(c.system, c.concurrency): c for c in cells}
    lines = [f"# Serving benchmark ({meta['date']})", "",
             f"Agent: {ENV_ID} (obs {meta['obs_dim']}, {meta['n_actions']} actions, GRU hidden {meta['hidden_dim']}); "
             f"{meta['cpu_count']} CPU cores, {meta['note']}; {args.seconds:g} s per cell, median of "
             f"{args.repeat} round(s); "
             f"onnxruntime {meta['onnxruntime']}, torch {meta['torch']}.", "",
             "## One episode (K=1): decision latency", "",
             "| system | p50 us | p99 us | decisions/s | p50 / in-process ORT |", "|---|---:|---:|---:|---:|"]
    for s in systems:
        c = by.get((s, 1))
        if c:
            ratio = c.p50_us / ort_by_k[1].p50_us if 1 in ort_by_k else float("nan")
            lines.append(f"| {s} | {c.p50_us:.0f} | {c.p99_us:.0f} | {c.decisions_per_s:,.0f} | {ratio:.1f}x |")
    lines += ["", "## Throughput: decisions/s with K concurrent episodes (ratio to in-process ONNX Runtime)", "",
              "| system | " + " | ".join(f"K={k}" for k in Ks) + " |", "|---|" + "---:|" * len(Ks)]
    for s in systems:
        row = []
        for k in Ks:
            c = by.get((s, k))
            ratio = c.decisions_per_s / ort_by_k[k].decisions_per_s if c and k in ort_by_k else float("nan")
            row.append(f"{c.decisions_per_s:,.0f} ({ratio:.2f})" if c else "-")
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    mux = [c for c in cells if "multiplex" in c.system]
    if mux:
        lines += ["", "Multiplexed stream, decisions per gRPC message (client-side batching of the episodes in flight): "
                  + ", ".join(f"K={c.concurrency}: {c.rows_per_message:.1f}" for c in mux) + "."]
    lines += ["", "## CPU cost: serving-process CPU microseconds per decision (load-independent; "
              "1e6 / x = decisions/s per dedicated core)", "",
              "| system | " + " | ".join(f"K={k}" for k in Ks) + " |", "|---|" + "---:|" * len(Ks)]
    for s in systems:
        lines.append(f"| {s} | " + " | ".join(f"{by[(s, k)].server_cpu_us:.1f}" if (s, k) in by else "-"
                                               for k in Ks) + " |")
    targets = [("stream p50 at K=1", "marlctl serve stream (auto)", 1, "p50_us", 200, "<="),
               ("stream p99 at K=1", "marlctl serve stream (auto)", 1, "p99_us", 500, "<="),
               ("stream decisions/s at K=64", "marlctl serve stream (auto)", 64, "decisions_per_s", 25_000, ">="),
               ("multiplexed decisions/s at K=64", "marlctl serve multiplex (auto)", 64, "decisions_per_s", 25_000, ">=")]
    plain = by.get(("plain gRPC + PyTorch unary", 64))
    if plain is not None:  # issue 12: unary at >= 3x the plain gRPC + PyTorch unary server
        targets.append(("unary decisions/s at K=64 (3x plain unary)", "marlctl serve unary (auto)", 64,
                        "decisions_per_s", round(3 * plain.decisions_per_s), ">="))
    lines += ["", "## The serving issue's targets on this machine", "",
              "| target | measured | bare gRPC echo (same run) | met |", "|---|---:|---:|---|"]
    for what, system, k, field, bound, op in targets:
        if (system, k) in by:
            floor = "bare grpc.aio unary echo (floor)" if "unary" in system else "bare grpc.aio echo stream (floor)"
            got = getattr(by[(system, k)], field)
            echo = getattr(by[(floor, k)], field) if (floor, k) in by else float("nan")
            met = got <= bound if op == "<=" else got >= bound
            lines.append(f"| {what} {op} {bound:,} | {got:,.0f} | {echo:,.0f} | {'yes' if met else 'no'} |")
    lines += ["", "p50/p99 of a service cell = client-side round trip of one decision (observation written to "
              "decision read) while K episodes run; in-process cells time one batched call of K rows.", ""]
    atomic_write_text(RESULTS / "serving.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
