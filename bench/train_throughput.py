"""Training-loop throughput: env-steps/s and updates/s of each algorithm on SMAX maps, as JSON + Markdown.

Each (algorithm, map) builds the algorithm exactly as ``marlctl train`` does (same config layers), runs one
untimed warm-up iteration (JAX compiles the batched env, first episodes), then times whole training
iterations (batched rollout + replay + gradient updates) until ``--steps`` env steps or ``--max-seconds``.

    python bench/train_throughput.py --steps 6400 --out bench/results/train_throughput

``x qmix`` is each row's env-steps/s over QMIX's on the same map in the same run. On a shared machine whose
load moves during the run, wall-clock rates are noise; the timed part's CPU time (this process, all its
threads) is also recorded, and ``x qmix (CPU)`` compares env steps per CPU second. ``--rounds R`` repeats
the whole grid R times, interleaved (round after round, so load drifts hit every algorithm alike): the table
gives the median of each rate and the median [min, max] of the per-round ratios to that round's QMIX.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from marlctl.agents.files import atomic_write_text


def measure(algo: str, env_id: str, steps: int, max_seconds: float, device: str, overrides: list[str]) -> dict:
    import torch
    from marlctl.envs import env_spec
    from marlctl.trainer.config import load_config
    from marlctl.trainer.registry import algorithm_spec
    from marlctl.trainer.run import resolve_device, seed_everything

    cfg = load_config(algo, env_id, overrides=overrides, steps=steps, seed=0, device=device)
    dev = resolve_device(cfg.run.device)
    torch.set_num_threads(max(cfg.run.torch_threads, 1))
    seed_everything(0)
    spec = env_spec(env_id)
    t_build = time.perf_counter()
    alg = algorithm_spec(algo).build(cfg, spec, dev)
    warm = alg.train_iteration()
    warmup_s = time.perf_counter() - t_build
    env_steps = updates = iterations = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while env_steps < steps and time.perf_counter() - t0 < max_seconds:
        stats = alg.train_iteration()
        env_steps += stats.env_steps
        updates += stats.updates
        iterations += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    close = getattr(alg, "close", None)
    if callable(close):
        close()
    return {
        "algo": algo, "env_id": env_id, "device": str(dev), "num_envs": cfg.env.num_envs,
        "env_steps": env_steps, "updates": updates, "iterations": iterations, "wall_s": round(wall, 3),
        "env_steps_per_s": round(env_steps / wall, 1), "updates_per_s": round(updates / wall, 3),
        "cpu_s": round(cpu, 3), "env_steps_per_cpu_s": round(env_steps / cpu, 1),
        "warmup_s": round(warmup_s, 2), "warmup_env_steps": warm.env_steps,
        "capped_by_time": env_steps < steps,
    }


def measure_rollout(env_id: str, num_envs: int, batched_steps: int) -> dict:
    """Rollout alone (no learning): epsilon-greedy batched steps of a fresh agent network, after a warm-up step."""
    import numpy as np
    import torch
    from marlctl.agents.recurrent import AgentNet, AgentNetConfig
    from marlctl.envs import make_batched_env
    from marlctl.trainer.replay import ReplayBuffer
    from marlctl.trainer.rollout import RolloutWorker

    torch.set_num_threads(1)
    env = make_batched_env(env_id, num_envs)
    spec = env.spec
    net = AgentNet(AgentNetConfig(spec.obs_dim, spec.n_actions, spec.n_agents))
    worker = RolloutWorker(env, net, torch.device("cpu"))
    buf = ReplayBuffer(spec, 4096, spec.episode_limit)
    rng = np.random.default_rng(0)
    worker.run_steps(2, 0.5, rng, buf, reset_seed=0)  # JIT warm-up
    t0 = time.perf_counter()
    res = worker.run_steps(batched_steps, 0.5, rng, buf)
    wall = time.perf_counter() - t0
    env.close()
    return {"env_id": env_id, "num_envs": num_envs, "env_steps": res.env_steps, "episodes": res.episodes,
            "wall_s": round(wall, 3), "env_steps_per_s": round(res.env_steps / wall, 1)}


def summarize(rows: list[dict]) -> list[dict]:
    """One row per (algo, env) over all rounds: median rates, and per-round ratios to the same round's QMIX."""
    ok = [r for r in rows if "error" not in r]
    qmix = {(r["env_id"], r.get("round", 0)): r for r in ok if r["algo"] == "qmix"}
    keys = ("env_steps_per_s", "env_steps_per_cpu_s", "updates_per_s", "wall_s", "cpu_s", "warmup_s")
    out: list[dict] = []
    for env_id, algo in dict.fromkeys((r["env_id"], r["algo"]) for r in rows):
        group = [r for r in ok if r["env_id"] == env_id and r["algo"] == algo]
        errors = [r for r in rows if r["env_id"] == env_id and r["algo"] == algo and "error" in r]
        if not group:
            out.append({"algo": algo, "env_id": env_id, "error": errors[0]["error"]})
            continue
        row = {"algo": algo, "env_id": env_id, "rounds": len(group), "num_envs": group[0]["num_envs"],
               "env_steps": group[0]["env_steps"], "updates": group[0]["updates"],
               **{k: statistics.median(r[k] for r in group) for k in keys}}
        for key in ("env_steps_per_s", "env_steps_per_cpu_s"):
            ratios = [r[key] / q[key] for r in group if (q := qmix.get((env_id, r.get("round", 0))))]
            if ratios:
                row[f"x_qmix_{key}"] = (statistics.median(ratios), min(ratios), max(ratios))
        out.append(row)
    return out


def to_markdown(rows: list[dict], meta: dict[str, Any], rollout_rows: list[dict] | None = None) -> str:
    rounds = meta.get("rounds", 1)
    lines = [
        "# Training throughput (whole training loop: batched rollout + replay + updates)",
        "",
        f"Budget: {meta['steps']} env steps per run after one untimed warm-up iteration (cap {meta['max_seconds']} s); "
        f"device {meta['device']}; torch threads {meta['torch_threads']}; machine: {meta['machine']}.",
        f"Config: each algorithm's and env family's defaults plus `{' '.join(meta['overrides']) or '(none)'}`.",
        f"Command: `{meta['command']}`" if meta.get("command") else "",
        *([f"Rounds: {rounds}, interleaved; rates are medians over rounds, `x qmix` the median [min, max] of the "
           "per-round ratios to the same round's QMIX."] if rounds > 1 else []),
        "",
        "| algo | env | envs | env steps | updates | wall s | env-steps/s | x qmix | CPU s | env-steps/CPU-s | x qmix (CPU) "
        "| updates/s | warm-up s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ratio(r: dict, key: str) -> str:
        x = r.get(f"x_qmix_{key}")
        if x is None:
            return "-"
        return f"{x[0]:.2f}" if rounds == 1 else f"{x[0]:.2f} [{x[1]:.2f}, {x[2]:.2f}]"

    for r in summarize(rows):
        if "error" in r:
            lines.append(f"| {r['algo']} | {r['env_id']} | | | | | error: {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['algo']} | {r['env_id']} | {r['num_envs']} | {r['env_steps']} | {r['updates']} | "
                     f"{r['wall_s']:.2f} | {r['env_steps_per_s']:,.0f} | {ratio(r, 'env_steps_per_s')} | {r['cpu_s']:.2f} | "
                     f"{r['env_steps_per_cpu_s']:,.0f} | {ratio(r, 'env_steps_per_cpu_s')} | "
                     f"{r['updates_per_s']:.2f} | {r['warmup_s']:.1f} |")
    if rollout_rows:
        lines += ["", "## Rollout alone (epsilon-greedy, one agent-network call per batched step, episodes into replay)",
                  "", "| env | envs | env steps | episodes | wall s | env-steps/s |", "|---|---:|---:|---:|---:|---:|"]
        for r in rollout_rows:
            lines.append(f"| {r['env_id']} | {r['num_envs']} | {r['env_steps']} | {r['episodes']} | {r['wall_s']} | "
                         f"{r['env_steps_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from marlctl.trainer.registry import ALGORITHMS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algos", default=",".join(sorted(ALGORITHMS)))
    ap.add_argument("--envs", default="smax:3m,smax:2s3z")
    ap.add_argument("--steps", type=int, default=6400, help="timed env steps per run (after warm-up)")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="cap on the timed part of one run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    ap.add_argument("--rollout-envs", default="64,256", help="batch sizes of the rollout-only measurement ('' = skip)")
    ap.add_argument("--rollout-steps", type=int, default=200, help="batched steps of the rollout-only measurement")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the whole grid, interleaved; report medians")
    ap.add_argument("--out", default="bench/results/train_throughput", help="path prefix of .json and .md")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    rows: list[dict] = []
    for rnd in range(args.rounds):
        for env_id in args.envs.split(","):
            for algo in [a for a in args.algos.split(",") if a]:
                try:
                    row = measure(algo, env_id, args.steps, args.max_seconds, args.device, args.overrides)
                except Exception as exc:  # noqa: BLE001 - one failing algorithm must not hide the others
                    row = {"algo": algo, "env_id": env_id, "error": f"{type(exc).__name__}: {exc}"[:200]}
                row["round"] = rnd
                rows.append(row)
                print(json.dumps(row), flush=True)
    rollout_rows: list[dict] = []
    for env_id in args.envs.split(","):
        for b in [int(x) for x in args.rollout_envs.split(",") if x]:
            row = measure_rollout(env_id, b, args.rollout_steps)
            rollout_rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"steps": args.steps, "max_seconds": args.max_seconds, "device": args.device, "overrides": args.overrides,
            "rounds": args.rounds, "command": "python bench/train_throughput.py " + shlex.join(sys.argv[1:]),
            "torch_threads": 1, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps({"meta": meta, "rows": rows, "rollout": rollout_rows}, indent=2) + "\n"),
                         (".md", to_markdown(rows, meta, rollout_rows))):
        atomic_write_text(out.with_name(out.name + suffix), text)
    print(to_markdown(rows, meta, rollout_rows))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
