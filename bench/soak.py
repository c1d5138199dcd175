"""Soak benchmark of the agent service: many concurrent episodes for minutes, over the multiplexed and the
per-episode streams at once, watching errors, throughput, latency drift and the server's memory.

One ``marlctl serve`` process (pinned to core 0 unless ``--no-pin``) serves the serving bench's agent
(predator_prey, obs 77, GRU 64). One client process runs ``--episodes`` concurrent episodes, half on one
multiplexed ``Episodes`` stream (``serving.multiplex.AgentMux``, the runner's ``--transport multiplex``)
and half on per-episode ``Episode`` streams; each episode is 100 steps, then the next one starts. Every
``--window`` seconds it records decisions, errors (any failed RPC, refused row or unavailable action),
client-side p50/p99 per transport, and the server's RSS. The report: total errors, decisions/s, p99 of
the last window against the first (drift), RSS growth from the end of warm-up to the end (target: 0
errors, < 5%). Writes ``bench/results/soak.{json,md}``.

    python bench/soak.py                          # the full soak: 256 episodes, 10 minutes
    python bench/soak.py --minutes 1.5            # a short one
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from marlctl.agents.files import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _serving_bench():
    """bench/serving.py (its team, episode data and process helpers), imported by path."""
    spec = importlib.util.spec_from_file_location("bench_serving", HERE / "serving.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["bench_serving"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


class Window:
    """What happened in one reporting window."""

    def __init__(self) -> None:
        self.lat_us: dict[str, list[float]] = {"multiplex": [], "stream": []}
        self.errors: list[str] = []

    def summary(self, t: float, seconds: float, rss: float) -> dict:
        out = {"t_s": round(t, 1), "rss_mib": round(rss, 1), "errors": len(self.errors),
               "error_examples": self.errors[:3]}
        total = 0
        for kind, lat in self.lat_us.items():
            total += len(lat)
            out[f"{kind}_decisions_per_s"] = round(len(lat) / seconds, 1)
            out[f"{kind}_p50_us"] = round(float(np.percentile(lat, 50)), 1) if lat else float("nan")
            out[f"{kind}_p99_us"] = round(float(np.percentile(lat, 99)), 1) if lat else float("nan")
        out["decisions_per_s"] = round(total / seconds, 1)
        return out


async def soak(target: str, episodes: int, seconds: float, window_s: float, pid: int, obs_TO, avail_TA) -> list[dict]:
    import grpc
    from marlctl.proto import agent_pb2, agent_pb2_grpc
    from marlctl.serving.multiplex import AgentMux

    msgs = [agent_pb2.Observation(obs=o.tolist(), avail_actions=a.tolist()) for o, a in zip(obs_TO, avail_TA, strict=True)]
    windows: list[dict] = []
    current = Window()
    stop_at = time.perf_counter() + seconds
    options = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as ch:
        stub = agent_pb2_grpc.AgentServiceStub(ch)
        spec = await stub.GetSpec(agent_pb2.GetSpecRequest())
        mux = AgentMux(ch, stub, 0, 10.0, spec.max_episodes, lambda _spec: None)

        async def stream_episode() -> None:
            while time.perf_counter() < stop_at:
                call = stub.Episode()
                try:
                    for t, m in enumerate(msgs):
                        t0 = time.perf_counter()
                        await call.write(m)
                        d = await call.read()
                        current.lat_us["stream"].append((time.perf_counter() - t0) * 1e6)
                        if d is grpc.aio.EOF or not (0 <= d.action < len(avail_TA[t]) and avail_TA[t][d.action]):
                            current.errors.append(f"stream: bad decision {d!r:.80} at step {t}")
                            break
                    await call.done_writing()
                    await call.code()
                except grpc.aio.AioRpcError as exc:
                    current.errors.append(f"stream: {exc.code().name} {exc.details()}")

        async def mux_episode() -> None:
            while time.perf_counter() < stop_at:
                slot = mux.open_slot()
                try:
                    for o, a in zip(obs_TO, avail_TA, strict=True):
                        t0 = time.perf_counter()
                        action, _, reason, _ = await mux.decide(slot, o, a)
                        current.lat_us["multiplex"].append((time.perf_counter() - t0) * 1e6)
                        if reason is not None:
                            current.errors.append(f"multiplex: {reason}")
                            break
                finally:
                    mux.close_slot(slot)

        async def reporter() -> None:
            nonlocal current
            t_start = time.perf_counter()
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await asyncio.sleep(min(window_s, max(stop_at - t0, 0.01)))
                w, current = current, Window()
                windows.append(w.summary(time.perf_counter() - t_start, time.perf_counter() - t0, rss_mib(pid)))
                print(json.dumps({k: v for k, v in windows[-1].items() if k != "error_examples"}), flush=True)

        half = episodes // 2
        await asyncio.gather(reporter(), *(mux_episode() for _ in range(half)),
                             *(stream_episode() for _ in range(episodes - half)))
        await mux.close()
    return windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=256, help="concurrent episodes (half multiplexed, half streams)")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    ap.add_argument("--window", type=float, default=10.0, help="seconds per reporting window")
    ap.add_argument("--warmup-windows", type=int, default=1, help="windows before the RSS baseline is taken")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="let the OS place client and server")
    args = ap.parse_args()
    B = _serving_bench()
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and len(cores) >= 2:
        B.SERVER_CPUS = {cores[0]}
        os.sched_setaffinity(0, set(cores[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        _, model_dir = B.make_team(Path(tmp))
        manifest = json.loads((model_dir / "manifest.json").read_text())
        obs_TO, avail_TA = B.episode_data(manifest["obs_dim"], manifest["n_actions"])
        port = B.free_port()
        proc = B.start_process([sys.executable, "-m", "marlctl.cli.app", "serve", str(model_dir), "--agent", "0",
                                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--grace", "1",
                                "--max-episodes", str(max(1024, 2 * args.episodes))], f"127.0.0.1:{port}")
        try:
            rss_start = rss_mib(proc.pid)
            windows = asyncio.run(soak(f"127.0.0.1:{port}", args.episodes, args.minutes * 60, args.window, proc.pid,
                                       obs_TO, avail_TA))
            alive = proc.poll() is None
        finally:
            B.stop_process(proc)
    write_results(windows, args, rss_start, alive)


def write_results(windows: list[dict], args: argparse.Namespace, rss_start: float, alive: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = windows[min(args.warmup_windows, len(windows) - 1)]
    last = windows[-1]
    errors = sum(w["errors"] for w in windows)
    growth = (last["rss_mib"] - base["rss_mib"]) / base["rss_mib"] * 100
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "episodes": args.episodes, "minutes": args.minutes,
        "window_s": args.window, "pinned": bool(args.pin), "errors": errors, "server_alive_at_end": alive,
        "decisions_per_s": round(float(np.mean([w["decisions_per_s"] for w in windows[1:] or windows])), 1),
        "rss_mib_start": round(rss_start, 1), "rss_mib_after_warmup": base["rss_mib"], "rss_mib_end": last["rss_mib"],
        "rss_growth_pct": round(growth, 2),
        **{f"{k}_p99_us_{when}": w[f"{k}_p99_us"] for k in ("multiplex", "stream")
           for when, w in (("first", base), ("last", last))},
        "targets_met": errors == 0 and growth < 5.0 and alive,
    }
    atomic_write_text(RESULTS / "soak.json", json.dumps({"summary": summary, "windows": windows}, indent=2) + "\n")
    lines = [f"# Soak benchmark ({summary['date']})", "",
             f"{args.episodes} concurrent episodes (half on one multiplexed stream, half on per-episode streams) "
             f"for {args.minutes:g} min against one `marlctl serve` process"
             f"{' pinned to one core' if args.pin else ''}; {args.window:g} s windows.", "",
             "| errors | decisions/s | multiplex p99 us first -> last | stream p99 us first -> last | "
             "RSS MiB after warm-up -> end | RSS growth | met (0 errors, < 5%) |",
             "|---:|---:|---:|---:|---:|---:|---|",
             f"| {errors} | {summary['decisions_per_s']:,.0f} | {summary['multiplex_p99_us_first']:,.0f} -> "
             f"{summary['multiplex_p99_us_last']:,.0f} | {summary['stream_p99_us_first']:,.0f} -> "
             f"{summary['stream_p99_us_last']:,.0f} | {base['rss_mib']:.1f} -> {last['rss_mib']:.1f} | "
             f"{growth:+.2f}% | {'yes' if summary['targets_met'] else 'no'} |", "",
             "Per window:", "", "| t s | decisions/s | multiplex p99 us | stream p99 us | RSS MiB | errors |",
             "|---:|---:|---:|---:|---:|---:|"]
    for w in windows:
        lines.append(f"| {w['t_s']:.0f} | {w['decisions_per_s']:,.0f} | {w['multiplex_p99_us']:,.0f} | "
                     f"{w['stream_p99_us']:,.0f} | {w['rss_mib']:.1f} | {w['errors']} |")
    examples = [e for w in windows for e in w["error_examples"]][:5]
    if examples:
        lines += ["", "First errors: " + "; ".join(examples)]
    atomic_write_text(RESULTS / "soak.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
