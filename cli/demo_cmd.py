"""`marlctl demo`: the README's main job, end to end on an embedded default.

train -> export -> serve-team (one gRPC process per agent) -> run live episodes through
those services -> replay one recorded episode against the models (and render it) -> plot
the learning curve -> a one-screen summary. Every stage is the real CLI command a user
would type (printed before it runs), so the demo doubles as a walkthrough.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import typer
from marlctl.cli.common import console, fail
from rich.panel import Panel
from rich.table import Table

DEMO_MARKER = ".marlctl-demo"


def _marlctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "marlctl.cli.app", *args]


def _show(cmd: list[str]) -> str:
    return "marlctl " + " ".join(cmd[3:])


def _run_stage(title: str, cmd: list[str], timings: dict[str, float]) -> None:
    console.rule(f"[bold]{title}")
    console.print(f"[cyan]$ {_show(cmd)}[/]")
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    timings[title] = time.perf_counter() - t0
    if rc != 0:
        raise fail(f"stage '{title}' failed (exit code {rc})", f"re-run the command above to see the error: {_show(cmd)}")


def _free_port_block(n: int, start: int = 50051) -> int:
    """First port P >= start such that P .. P+n-1 are all free on localhost."""
    for base in range(start, 65000 - n, n):
        ok = True
        for port in range(base, base + n):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no block of free ports found")


def _wait_serving(addresses: list[str], proc: subprocess.Popen, deadline_s: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    end = time.monotonic() + deadline_s
    pending = list(addresses)
    while pending:
        if proc.poll() is not None:
            raise fail(f"serve-team exited early (code {proc.returncode})")
        if time.monotonic() > end:
            raise fail(f"agent services not SERVING after {deadline_s:.0f}s: {', '.join(pending)}")
        addr = pending[0]
        try:
            with grpc.insecure_channel(addr) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                pending.pop(0)
                continue
        except grpc.RpcError:
            pass
        time.sleep(0.2)


def demo(
    workdir: Path = typer.Option(Path("marlctl-demo"), help="Where the run, models, records and pictures go (recreated)."),
    env: str = typer.Option("matrix:qtran", help="Environment id (see `marlctl envs list`)."),
    algo: str = typer.Option("qtran-base", help="Training algorithm."),
    steps: int = typer.Option(6000, help="Environment steps to train."),
    episodes: int = typer.Option(32, help="Live episodes to run through the agent services."),
    seed: int = typer.Option(0, help="Seed for training and episodes."),
) -> None:
    """Train -> export -> serve one gRPC service per agent -> run live episodes -> summary."""
    if workdir.exists():
        if not (workdir / DEMO_MARKER).exists() and any(workdir.iterdir()):
            raise fail(f"{workdir} exists and was not made by `marlctl demo`", "pass --workdir with a new or demo directory")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / DEMO_MARKER).write_text("made by marlctl demo; recreated on every run\n")
    run_dir, model_dir, rec_dir = workdir / "run", workdir / "model", workdir / "records"
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    _run_stage("1/6 train", _marlctl("train", "--algo", algo, "--env", env, "--steps", str(steps),
                                     "--seed", str(seed), "--out", str(run_dir)), timings)
    _run_stage("2/6 export", _marlctl("export", str(run_dir), "--out", str(model_dir)), timings)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    n_agents = len(manifest["agents"])

    base = _free_port_block(n_agents)
    addresses = [f"127.0.0.1:{base + i}" for i in range(n_agents)]
    serve_cmd = _marlctl("serve-team", str(model_dir), "--base-port", str(base),
                         "--metrics-base-port", str(_free_port_block(n_agents, base + 1000)))
    console.rule("[bold]3/6 serve-team")
    console.print(f"[cyan]$ {_show(serve_cmd)} &[/]")
    t0 = time.perf_counter()
    team = subprocess.Popen(serve_cmd, start_new_session=True)
    try:
        _wait_serving(addresses, team, deadline_s=120)
        timings["3/6 serve-team"] = time.perf_counter() - t0
        console.print(f"[green]{n_agents} agent services SERVING[/] on {', '.join(addresses)}")
        _run_stage("4/6 run", _marlctl("run", "--env", env, "--agents", ",".join(addresses), "--episodes",
                                       str(episodes), "--concurrency", "8", "--seed", str(seed),
                                       "--record", str(rec_dir)), timings)
    finally:
        if team.poll() is None:
            os.killpg(team.pid, signal.SIGTERM)
            try:
                team.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(team.pid, signal.SIGKILL)
    records = sorted(p for p in rec_dir.iterdir() if p.is_file())
    if not records:
        raise fail(f"the run recorded no episodes in {rec_dir}")
    gif = workdir / "episode.gif"
    _run_stage("5/6 replay", _marlctl("replay", str(records[0]), "--model", str(model_dir), "--render", str(gif)), timings)
    curve = workdir / "learning_curve.png"
    _run_stage("6/6 plot", _marlctl("plot", str(run_dir), "--out", str(curve)), timings)
    _summary(workdir, run_dir, model_dir, records, timings, time.perf_counter() - t_start, env, algo)


def _summary(workdir: Path, run_dir: Path, model_dir: Path, records: list[Path], timings: dict[str, float],
             total_s: float, env: str, algo: str) -> None:
    from marlctl.serving.records import load_record

    outcomes = [load_record(p, expect_env=env) for p in records]
    returns = [float(r.outcome["return"]) for r in outcomes]
    wins = [bool(r.outcome.get("won", False)) for r in outcomes]
    degraded = sum(bool(r.outcome.get("degraded", False)) for r in outcomes)
    evals = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if '"eval/return"' in line]
    manifest = json.loads((model_dir / "manifest.json").read_text())

    table = Table(show_header=False, box=None)
    table.add_row("algorithm / env", f"{algo} on {env}")
    if evals:
        table.add_row("training (last greedy eval)", f"return {evals[-1]['eval/return']:.3f}, "
                      f"win rate {evals[-1].get('eval/win_rate', 0.0):.2f}")
    verif = manifest.get("verification", {})
    if verif:
        table.add_row("export parity (ORT vs PyTorch)", f"max |Δscore| {verif.get('max_abs_diff_scores', float('nan')):.2e}, "
                      f"action agreement {verif.get('action_agreement', float('nan')):.3f}")
    table.add_row("live episodes via gRPC", f"{len(outcomes)}: mean return {sum(returns) / len(returns):.3f}, "
                  f"win rate {sum(wins) / len(wins):.2f}, degraded {degraded}")
    for stage, secs in timings.items():
        table.add_row(f"time: {stage}", f"{secs:.1f} s")
    table.add_row("total", f"{total_s:.1f} s")
    table.add_row("artifacts", f"{run_dir}  {model_dir}  {records[0].parent}  "
                  f"{workdir / 'episode.gif'}  {workdir / 'learning_curve.png'}")
    console.print(Panel(table, title="[bold]marlctl demo: summary", expand=False))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
