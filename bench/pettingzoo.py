"""PettingZoo through marlctl: adapter env-steps/s against a bare PettingZoo loop, and QMIX / VDN / MAPPO / TAD-PPO
on MPE2 simple_spread (3 agents) at one stated budget over 3 seeds, with training-loop env-steps/s.

Section "batched form": ``B`` copies of the env stepped with random actions, interleaved rounds, medians:
(a) a bare PettingZoo loop (``parallel_env(max_cycles=100)`` copies, dict actions, ``reset()`` when an episode ends),
(b) marlctl's batched adapter (``make_batched_env``: a loop over ``B`` adapters in this process), and
(c) the same adapters split over worker processes (one pipe per worker; measured here to choose the form).

Section "learning": each (algorithm, seed) cell is a real run directory under ``--runs`` trained with
``trainer.run.train_run`` and marlctl's packaged defaults for ``pettingzoo:`` ids, greedy evaluation every
``--eval-interval`` steps. Cells are resumable: a finished cell (``end`` in its log) is read back, not re-run; an
unfinished one continues from its latest checkpoint. Writes ``<out>.json``, ``<out>.md`` and ``<out>.png``.

    nice -n 10 .venv/bin/python bench/pettingzoo.py --steps 80000 --seeds 0 1 2 --out bench/results/pettingzoo
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder leads sys.path and its name would shadow the real `pettingzoo` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
from marlctl.agents.files import atomic_write_text  # noqa: E402

MAX_CYCLES = 100  # BenchMARL's simple_spread task config (conf/task/pettingzoo/simple_spread.yaml): 100-step episodes
ENV_ID = f"pettingzoo:mpe2.simple_spread_v3,max_cycles={MAX_CYCLES}"
ALGOS = ("qmix", "vdn", "mappo", "tad-ppo")
# The peer figures: BenchMARL 1.5.2, packaged defaults, simple_spread, end to end.
BENCHMARL_QUOTED = {"mappo": 292.0, "qmix": 460.0}
# BenchMARL's default on_policy_ and off_policy_collected_frames_per_batch (conf/experiment/base_experiment.yaml).
BENCHMARL_FRAMES_PER_ITERATION = 6000


# ------------------------------------------------------------------ batched form


class BareLoop:
    """``num_envs`` plain PettingZoo ``parallel_env()`` copies stepped in a Python loop with random dict actions."""

    def __init__(self, num_envs: int, seed: int) -> None:
        from mpe2 import simple_spread_v3

        self.envs = [simple_spread_v3.parallel_env(max_cycles=MAX_CYCLES) for _ in range(num_envs)]
        for b, env in enumerate(self.envs):
            env.reset(seed=seed + b)
        self.agents = self.envs[0].possible_agents
        self.rng = np.random.default_rng(seed)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            acts = self.rng.integers(0, 5, size=(len(self.envs), len(self.agents)))
            for b, env in enumerate(self.envs):
                if not env.agents:
                    env.reset()
                env.step({a: int(acts[b, i]) for i, a in enumerate(self.agents)})

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(conn: Any, env_id: str, num_envs: int) -> None:
    from marlctl.envs import make_batched_env

    env = make_batched_env(env_id, num_envs)
    while True:
        msg = conn.recv()
        if msg[0] == "close":
            break
        bs = env.reset(msg[1]) if msg[0] == "reset" else env.step(msg[1])
        conn.send((bs.obs, bs.state, bs.avail, bs.reward, bs.done))
    env.close()


class WorkerBatch:
    """Measurement only: ``workers`` processes, each holding ``num_envs / workers`` adapters, stepped in parallel."""

    def __init__(self, env_id: str, num_envs: int, workers: int, seed: int) -> None:
        ctx = mp.get_context("spawn")
        sizes = [num_envs // workers + (w < num_envs % workers) for w in range(workers)]
        self.bounds = np.cumsum([0, *sizes])
        self.conns, self.procs = [], []
        for k in sizes:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, env_id, k), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        self.rng = np.random.default_rng(seed)
        for w, c in enumerate(self.conns):
            c.send(("reset", seed + w))
        self.avail = self._gather()[2]

    def _gather(self) -> tuple[np.ndarray, ...]:
        parts = [c.recv() for c in self.conns]
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(5))

    def run(self, steps: int) -> None:
        from marlctl.envs.vector import random_actions

        for _ in range(steps):
            actions = random_actions(self.avail, self.rng)
            for w, c in enumerate(self.conns):
                c.send(("step", actions[self.bounds[w]:self.bounds[w + 1]]))
            self.avail = self._gather()[2]

    def cpu_s(self) -> float:
        """CPU seconds the worker processes used so far (utime + stime from /proc)."""
        total = 0.0
        for p in self.procs:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def close(self) -> None:
        for c in self.conns:
            c.send(("close",))
        for p in self.procs:
            p.join(timeout=10)


class AdapterLoop:
    """marlctl's batched adapter (``make_batched_env``) with random available actions."""

    def __init__(self, num_envs: int, seed: int) -> None:
        from marlctl.envs import make_batched_env

        self.env = make_batched_env(ENV_ID, num_envs)
        self.avail = self.env.reset(seed).avail
        self.rng = np.random.default_rng(seed)

    def run(self, steps: int) -> None:
        from marlctl.envs.vector import random_actions

        for _ in range(steps):
            self.avail = self.env.step(random_actions(self.avail, self.rng)).avail

    def close(self) -> None:
        self.env.close()


def batched_form(sizes: list[int], steps: int, rounds: int) -> dict[str, Any]:
    """Env-steps/s (wall clock and per CPU second) of each form, its chunks interleaved so that the load of the
    shared machine falls on every form alike: ``rounds`` x (bare chunk, adapter chunk, workers chunk)."""
    rows = []
    for num_envs in sizes:
        forms = {"bare": BareLoop(num_envs, 0), "adapter": AdapterLoop(num_envs, 0),
                 "workers2": WorkerBatch(ENV_ID, num_envs, 2, 0)}
        chunk = max(steps // num_envs // rounds, 5)
        for f in forms.values():
            f.run(2)  # warm
        wall = dict.fromkeys(forms, 0.0)
        cpu = dict.fromkeys(forms, 0.0)
        for _ in range(rounds):
            for name, f in forms.items():
                w0, c0 = time.perf_counter(), time.process_time()
                k0 = f.cpu_s() if isinstance(f, WorkerBatch) else 0.0
                f.run(chunk)
                wall[name] += time.perf_counter() - w0
                cpu[name] += time.process_time() - c0 + ((f.cpu_s() - k0) if isinstance(f, WorkerBatch) else 0.0)
        for f in forms.values():
            f.close()
        n = chunk * rounds * num_envs
        rate = {k: n / v for k, v in wall.items()}
        per_cpu = {k: n / v for k, v in cpu.items()}
        rows.append({"num_envs": num_envs, "env_steps_per_form": n, "rounds": rounds, "wall_rate": rate,
                     "cpu_rate": per_cpu, "adapter_vs_bare": rate["adapter"] / rate["bare"],
                     "adapter_vs_bare_cpu": per_cpu["adapter"] / per_cpu["bare"],
                     "workers_vs_adapter": rate["workers2"] / rate["adapter"],
                     "workers_vs_adapter_cpu": per_cpu["workers2"] / per_cpu["adapter"]})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "rounds"}), flush=True)
    return {"rows": rows}


# ------------------------------------------------------------------ learning


def cell_overrides(args: argparse.Namespace) -> list[str]:
    return [f"run.eval_interval={args.eval_interval}", f"run.eval_episodes={args.eval_episodes}",
            f"run.log_interval={args.eval_interval}", f"run.save_interval={args.eval_interval}",
            "run.progress=false", "run.checkpoint_buffer=false", "run.keep_checkpoints=1"]


def _finished(run_dir: Path) -> bool:
    log = run_dir / "log.jsonl"
    return log.is_file() and any(json.loads(line).get("event") == "end" for line in log.read_text().splitlines()
                                 if line.strip())


def run_cell(algo: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume, or just read back) one cell; its curve, final eval and end-to-end env-steps/s."""
    from marlctl.trainer.config import load_config
    from marlctl.trainer.plot import read_curve
    from marlctl.trainer.run import resume_run, train_run
    from rich.console import Console

    run_dir = Path(args.runs) / f"{algo}_s{seed}"
    quiet = Console(quiet=True)
    status = "read back"
    if not _finished(run_dir):
        if (run_dir / "checkpoints" / "latest.pt").is_file():
            resume_run(run_dir, console=quiet)
            status = "resumed"
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            cfg = load_config(algo, ENV_ID, overrides=cell_overrides(args), steps=args.steps, seed=seed,
                              device="cpu")
            c0 = time.process_time()
            train_run(cfg, run_dir, quiet)
            # CPU seconds of the whole run (this process, all threads), kept beside the run for a later read-back.
            atomic_write_text(run_dir / "bench_cpu.json", json.dumps({"cpu_s": time.process_time() - c0}))
            status = "trained"
    end: dict[str, Any] = {}
    train_rates = []
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "end":
            end = rec
        elif rec.get("event") == "train" and "train/env_steps_per_s" in rec:
            train_rates.append(rec["train/env_steps_per_s"])
    curve = read_curve(run_dir, "eval")
    returns = curve.values["eval/return"]
    cpu_file = run_dir / "bench_cpu.json"
    cpu_s = json.loads(cpu_file.read_text())["cpu_s"] if cpu_file.is_file() else None
    return {"algo": algo, "seed": seed, "status": status, "run_dir": str(run_dir),
            "curve": [[int(s), float(v)] for s, v in zip(curve.steps, returns, strict=True)],
            "final_return": float(returns[-1]), "env_steps": end.get("env_steps"), "wall_s": end.get("wall_s"),
            "env_steps_per_s": end.get("env_steps_per_s"), "updates": end.get("updates"), "cpu_s": cpu_s,
            "env_steps_per_cpu_s": end["env_steps"] / cpu_s if cpu_s and end.get("env_steps") else None,
            "train_env_steps_per_s_median": statistics.median(train_rates) if train_rates else None}


def summarize(cells: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from marlctl.serving.stats import mean_t_interval

    out: dict[str, dict[str, Any]] = {}
    for algo in dict.fromkeys(c["algo"] for c in cells):
        mine = [c for c in cells if c["algo"] == algo]
        mean, low, high = mean_t_interval([c["final_return"] for c in mine])
        rates = [c["env_steps_per_s"] for c in mine if c["env_steps_per_s"]]
        cpu_rates = [c["env_steps_per_cpu_s"] for c in mine if c.get("env_steps_per_cpu_s")]
        n = min(len(c["curve"]) for c in mine)
        curve = []
        for k in range(n):
            m, lo, hi = mean_t_interval([c["curve"][k][1] for c in mine])
            curve.append([mine[0]["curve"][k][0], m, lo, hi])
        out[algo] = {"seeds": [c["seed"] for c in mine], "final_return": mean, "ci95": [low, high],
                     "env_steps_per_s": statistics.median(rates) if rates else None,
                     "env_steps_per_cpu_s": statistics.median(cpu_rates) if cpu_rates else None, "curve": curve}
    return out


def peer_curves(bm: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """BenchMARL's mean eval curve per algorithm ``[K, 2]`` (frames, team-sum return) over its finished cells."""
    out: dict[str, np.ndarray] = {}
    for algo in BENCHMARL_QUOTED:
        curves = [c["curve"] for c in (bm or {}).get("cells", []) if c["algo"] == algo and c.get("curve")]
        if curves:
            n = min(len(c) for c in curves)
            arr = np.array([c[:n] for c in curves], dtype=float)  # [seeds, K, 2]
            out[algo] = arr.mean(0)
    return out


def plot(summary: dict[str, dict[str, Any]], path: Path, title: str,
         peers: dict[str, np.ndarray] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from marlctl.agents.files import atomic_path

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for algo, s in summary.items():
        c = np.array(s["curve"], dtype=float)  # [K, 4]: steps, mean, low, high
        ax.plot(c[:, 0], c[:, 1], label=f"{algo} ({len(s['seeds'])} seeds)")
        ax.fill_between(c[:, 0], c[:, 2], c[:, 3], alpha=0.2)
    for algo, c in (peers or {}).items():
        ax.plot(c[:, 0], c[:, 1], ls="--", label=f"BenchMARL {algo} (mean)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("greedy eval return (team sum)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# ------------------------------------------------------------------ training throughput per CPU second


def our_throughput(algo: str, steps: int, runs: Path) -> dict[str, Any]:
    """One short run in this process: env steps per wall second and per CPU second of this process (all threads)."""
    from marlctl.trainer.config import load_config
    from marlctl.trainer.run import train_run
    from rich.console import Console

    run_dir = runs / "throughput" / algo
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(algo, ENV_ID, overrides=["run.eval_interval=0", "run.eval_episodes=4", "run.progress=false",
                                               "run.save_interval=0", "run.checkpoint_buffer=false"],
                      steps=steps, seed=0, device="cpu")
    c0, w0 = time.process_time(), time.perf_counter()
    summary = train_run(cfg, run_dir, Console(quiet=True))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {"algo": algo, "system": "marlctl", "env_steps": summary.env_steps, "wall_s": wall, "cpu_s": cpu,
            "env_steps_per_s": summary.env_steps / wall, "env_steps_per_cpu_s": summary.env_steps / cpu}


# BenchMARL's own entry point (benchmarl/run.py) without the hydra decorator, timed around experiment.run().
_BENCHMARL_DRIVER = """
import json, sys, time
from hydra import compose, initialize_config_module
from benchmarl.hydra_config import load_experiment_from_hydra
algo, frames, folder, seed, eval_interval = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
with initialize_config_module(config_module="benchmarl.conf", version_base=None):
    cfg = compose(config_name="config", overrides=[f"algorithm={algo}", "task=pettingzoo/simple_spread",
        f"experiment.max_n_frames={frames}", "experiment.loggers=[csv]", "experiment.render=false",
        f"experiment.evaluation_interval={eval_interval}", f"experiment.save_folder={folder}", f"seed={seed}"])
exp = load_experiment_from_hydra(cfg, task_name="pettingzoo/simple_spread")
c0, w0 = time.process_time(), time.perf_counter()
exp.run()
print("BENCHMARL_RESULT " + json.dumps({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0,
                                         "frames": int(exp.total_frames)}))
"""


def _benchmarl(python: str, algo: str, frames: int, folder: Path, seed: int, eval_interval: int) -> dict[str, Any]:
    """One BenchMARL 1.5.2 experiment in its own interpreter (its virtualenv: it needs pettingzoo 1.24) at its
    packaged simple_spread defaults, except: CSV logger only, no rendering, ``frames`` frames, an evaluation every
    ``eval_interval`` frames (a multiple of its 6,000-frame iteration). Its eval curve is read from the CSV logger
    (BenchMARL logs the agents' mean reward: x3 gives the team sum marlctl reports)."""
    import csv
    import subprocess

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = subprocess.run([python, "-c", _BENCHMARL_DRIVER, algo, str(frames), str(folder), str(seed),
                          str(eval_interval)], cwd=folder, capture_output=True, text=True, timeout=6 * 3600)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("BENCHMARL_RESULT ")]
    if out.returncode != 0 or not line:
        return {"algo": algo, "seed": seed, "system": "benchmarl", "error": (out.stderr or out.stdout).strip()[-500:]}
    res = json.loads(line[-1].split(" ", 1)[1])
    evals = list(folder.glob("*/*/scalars/eval_reward_episode_reward_mean.csv"))
    # The CSV logger's step column is BenchMARL's iteration index (0 after the first iteration's frames).
    curve = [[(int(float(r[0])) + 1) * BENCHMARL_FRAMES_PER_ITERATION, float(r[-1]) * 3]
             for r in csv.reader(evals[0].open()) if r] if evals else []
    return {"algo": algo, "seed": seed, "system": "benchmarl", "env_steps": res["frames"], "wall_s": res["wall_s"],
            "cpu_s": res["cpu_s"], "env_steps_per_s": res["frames"] / res["wall_s"],
            "env_steps_per_cpu_s": res["frames"] / res["cpu_s"], "curve": curve,
            "final_eval_return_team_sum": curve[-1][1] if curve else None}


def benchmarl_throughput(python: str, algo: str, frames: int, runs: Path) -> dict[str, Any]:
    """BenchMARL's training-loop rate: one short seed-0 experiment with a single evaluation at the end."""
    return _benchmarl(python, algo, frames, (runs / "benchmarl" / algo).resolve(), 0, frames)


def benchmarl_cell(python: str, algo: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One BenchMARL cell at the learning section's budget and eval interval; a finished cell (its
    ``<algo>_s<seed>.json`` beside the experiment folder, at the same budget) is read back, not re-run."""
    folder = (Path(args.runs) / "benchmarl_cells" / f"{algo}_s{seed}").resolve()
    record = folder.parent / f"{algo}_s{seed}.json"
    if record.is_file():
        cell = json.loads(record.read_text())
        if cell.get("steps") == args.steps and cell.get("eval_interval") == args.eval_interval and "error" not in cell:
            return {**cell, "status": "read back"}
    cell = {**_benchmarl(python, algo, args.steps, folder, seed, args.eval_interval), "steps": args.steps,
            "eval_interval": args.eval_interval, "status": "trained"}
    atomic_write_text(record, json.dumps(cell, indent=1) + "\n")
    return cell


# ------------------------------------------------------------------ report


def markdown(meta: dict[str, Any], form: dict[str, Any] | None, summary: dict[str, Any],
             cells: list[dict[str, Any]]) -> str:
    lines = [f"# PettingZoo via marlctl: {ENV_ID}", "",
             f"Command: `{meta['command']}`. Machine: {meta['machine']}. Date {meta['date']}.", ""]
    if form:
        lines += ["## Batched form: env-steps/s, random actions (chunks of the three forms interleaved)", "",
                  "Wall clock, and per CPU second (the workers' CPU time included) in brackets.", "",
                  "| B | bare PettingZoo loop | marlctl adapter (loop) | adapter / bare | adapter in 2 worker processes | "
                  "workers / loop |", "|---:|---:|---:|---:|---:|---:|"]
        for r in form["rows"]:
            w, c = r["wall_rate"], r["cpu_rate"]
            lines.append(f"| {r['num_envs']} | {w['bare']:,.0f} ({c['bare']:,.0f}) | {w['adapter']:,.0f} "
                         f"({c['adapter']:,.0f}) | {r['adapter_vs_bare']:.2f}x ({r['adapter_vs_bare_cpu']:.2f}x) | "
                         f"{w['workers2']:,.0f} ({c['workers2']:,.0f}) | {r['workers_vs_adapter']:.2f}x "
                         f"({r['workers_vs_adapter_cpu']:.2f}x) |")
        lines += ["", meta["form_verdict"], ""]
    lines += [f"## Learning: greedy eval return at {meta['steps']:,} env steps, seeds {meta['seeds']}", "",
              f"Packaged defaults for `pettingzoo:` ids (trainer/configs/env/pettingzoo*.toml) plus "
              f"`{' '.join(meta['overrides'])}`. Eval: {meta['eval_episodes']} greedy episodes every "
              f"{meta['eval_interval']:,} steps. Return = the sum of the 3 agents' rewards over the 100-step episode (BenchMARL logs the agents' mean: a third of it).",
              "", "| algorithm | final return (mean) | 95% CI (t, over seeds) | per seed | updates | end-to-end "
              "env-steps/s (median) | BenchMARL 1.5.2 (issue, its machine) | ratio (wall clock) |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for algo, s in summary.items():
        per_seed = ", ".join(f"{c['final_return']:.1f}" for c in cells if c["algo"] == algo)
        peer = BENCHMARL_QUOTED.get(algo)
        rate = s["env_steps_per_s"]
        ratio = f"{rate / peer:.1f}x" if peer and rate else "-"
        updates = "/".join(str(c["updates"]) for c in cells if c["algo"] == algo)
        lines.append(f"| {algo} | {s['final_return']:.1f} | [{s['ci95'][0]:.1f}, {s['ci95'][1]:.1f}] | {per_seed} | "
                     f"{updates} | {rate:,.0f} | {f'{peer:.0f}' if peer else '-'} | {ratio} |")
    lines += ["", f"![curves]({meta['png']})", "", "Curve points (mean return over seeds at each eval):", ""]
    lines_tp = _throughput_lines(meta.get("throughput", {}))
    for algo, s in summary.items():
        lines.append(f"- {algo}: " + ", ".join(f"{int(p[0]) // 1000}k {p[1]:.1f}" for p in s["curve"]))
    lines += lines_tp
    lines += _same_budget_lines(summary, meta.get("benchmarl_cells"), meta["steps"])
    lines += ["", "## Notes", "", *meta["notes"], ""]
    return "\n".join(lines)


def _throughput_lines(tp: dict[str, Any]) -> list[str]:
    rows = [r for which in ("ours", "benchmarl") for r in tp.get(which, {}).get("rows", [])]
    if not rows:
        return []
    out = ["", "## Training loop: env steps per CPU second (same machine, short runs)", "",
           "CPU seconds of the training process (all its threads) around the training loop only; wall-clock rates "
           "beside them depend on what else the shared machine ran.", "",
           "| system | algorithm | env steps | CPU s | env-steps / CPU s | wall env-steps/s | final eval return |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['system']} | {r['algo']} | error: {r['error'][:120]} | | | | |")
            continue
        ret = r.get("final_eval_return_team_sum")
        out.append(f"| {r['system']} | {r['algo']} | {r['env_steps']:,} | {r['cpu_s']:.1f} | "
                   f"{r['env_steps_per_cpu_s']:,.0f} | {r['env_steps_per_s']:,.0f} | "
                   f"{'-' if ret is None else f'{ret:.1f}'} |")
    ours = {r["algo"]: r for r in tp.get("ours", {}).get("rows", []) if "error" not in r}
    peer = {r["algo"]: r for r in tp.get("benchmarl", {}).get("rows", []) if "error" not in r}
    out.append("")
    for algo in sorted(set(ours) & set(peer)):
        out.append(f"- {algo}: marlctl {ours[algo]['env_steps_per_cpu_s'] / peer[algo]['env_steps_per_cpu_s']:.1f}x "
                   "BenchMARL's env steps per CPU second")
    return out


def _same_budget_lines(summary: dict[str, Any], bm: dict[str, Any] | None, steps: int) -> list[str]:
    """marlctl's and BenchMARL's final greedy eval return at the same budget, seeds and task, both run here."""
    if not bm:
        return []
    from marlctl.serving.stats import mean_t_interval

    if bm["steps"] != steps:
        return ["", f"(BenchMARL cells are at {bm['steps']:,} frames, not this report's {steps:,}: left out.)"]
    out = ["", f"## Same budget: marlctl against BenchMARL 1.5.2 at {steps:,} env steps, both trained here", "",
           "Final greedy (BenchMARL: deterministic) evaluation return, team sum, mean and 95% t-interval over seeds; "
           "BenchMARL at its packaged simple_spread defaults (10 evaluation episodes every "
           f"{bm['eval_interval']:,} frames), marlctl at its packaged `pettingzoo:` defaults. Env steps per CPU "
           "second are each system's whole training loop (evaluations included), median over seeds.", "",
           "| algorithm | marlctl return | BenchMARL return | marlctl env-steps / CPU s | BenchMARL env-steps / CPU s "
           "| ratio | BenchMARL per seed | BenchMARL wall s per run |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for algo in BENCHMARL_QUOTED:
        mine = [c for c in bm["cells"] if c["algo"] == algo and c.get("final_eval_return_team_sum") is not None]
        if not mine or algo not in summary:
            continue
        m, lo, hi = mean_t_interval([c["final_eval_return_team_sum"] for c in mine])
        ours = summary[algo]
        bm_rate = statistics.median(c["env_steps_per_cpu_s"] for c in mine)
        our_rate = ours.get("env_steps_per_cpu_s")
        ratio = f"{our_rate / bm_rate:.1f}x" if our_rate else "-"
        out.append(f"| {algo} | {ours['final_return']:.1f} [{ours['ci95'][0]:.1f}, {ours['ci95'][1]:.1f}] | "
                   f"{m:.1f} [{lo:.1f}, {hi:.1f}] | {f'{our_rate:,.0f}' if our_rate else '-'} | {bm_rate:,.0f} | "
                   f"{ratio} | {', '.join(format(c['final_eval_return_team_sum'], '.1f') for c in mine)} | "
                   f"{statistics.median(c['wall_s'] for c in mine):,.0f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=80_000, help="training budget per cell in env steps")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--algos", default=",".join(ALGOS))
    ap.add_argument("--eval-interval", type=int, default=10_000)
    ap.add_argument("--eval-episodes", type=int, default=32)
    ap.add_argument("--form-sizes", nargs="+", type=int, default=[8, 32], help="B of the batched-form section")
    ap.add_argument("--form-steps", type=int, default=8000, help="env steps per form and round")
    ap.add_argument("--form-rounds", type=int, default=10)
    ap.add_argument("--skip-form", action="store_true", help="reuse <out>_form.json instead of measuring")
    ap.add_argument("--form-only", action="store_true", help="measure the batched form only")
    ap.add_argument("--report-only", action="store_true", help="write the report from the finished cells only")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    ap.add_argument("--throughput", default="", help="comma list of ours,benchmarl: only measure training "
                    "env-steps per CPU second (writes <out>_throughput_<which>.json)")
    ap.add_argument("--throughput-steps", type=int, default=12_000)
    ap.add_argument("--benchmarl-cells", action="store_true", help="only train BenchMARL's MAPPO and QMIX at --steps "
                    "for --seeds, an evaluation every --eval-interval (writes <out>_benchmarl_cells.json; the "
                    "report puts them beside marlctl's cells)")
    ap.add_argument("--benchmarl-python", default="/tmp/benchmarl_venv/bin/python",
                    help="interpreter of a virtualenv with benchmarl==1.5.2 and pettingzoo[mpe]==1.24.3")
    ap.add_argument("--runs", default="bench/results/tmp/pettingzoo_runs", help="one run dir per cell (kept)")
    ap.add_argument("--out", default="bench/results/pettingzoo", help="path prefix of .json/.md/.png")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.throughput:
        for which in args.throughput.split(","):
            rows = []
            for algo in BENCHMARL_QUOTED:
                row = (our_throughput(algo, args.throughput_steps, Path(args.runs)) if which == "ours" else
                       benchmarl_throughput(args.benchmarl_python, algo, args.throughput_steps, Path(args.runs)))
                rows.append(row)
                print(json.dumps(row), flush=True)
            atomic_write_text(out.with_name(f"{out.name}_throughput_{which}.json"),
                              json.dumps({"steps": args.throughput_steps, "rows": rows}, indent=1) + "\n")
        return 0
    bm_path = out.with_name(f"{out.name}_benchmarl_cells.json")
    if args.benchmarl_cells:
        bm_cells = []
        for algo in BENCHMARL_QUOTED:
            for seed in args.seeds:
                bm_cells.append(benchmarl_cell(args.benchmarl_python, algo, seed, args))
                print(json.dumps({k: v for k, v in bm_cells[-1].items() if k != "curve"}), flush=True)
                atomic_write_text(bm_path, json.dumps({"steps": args.steps, "eval_interval": args.eval_interval,
                                                       "cells": bm_cells}, indent=1) + "\n")
        return 0
    form_path = out.with_name(out.name + "_form.json")
    form = None
    if not args.skip_form:
        form = batched_form(args.form_sizes, args.form_steps, args.form_rounds)
        atomic_write_text(form_path, json.dumps(form, indent=1) + "\n")
        if args.form_only:
            return 0
    elif form_path.is_file():
        form = json.loads(form_path.read_text())
    cells = []
    for algo in args.algos.split(","):
        for seed in args.seeds:
            if args.report_only and not _finished(Path(args.runs) / f"{algo}_s{seed}"):
                print(f"{algo} seed {seed}: not finished, left out of the report", flush=True)
                continue
            cell = run_cell(algo, seed, args)
            cells.append(cell)
            print(json.dumps({k: v for k, v in cell.items() if k != "curve"}), flush=True)
    summary = summarize(cells)
    form_verdict = ""
    if form:
        big = form["rows"][-1]
        form_verdict = (f"At B = {big['num_envs']} the adapter runs at {big['adapter_vs_bare']:.2f}x the bare loop in "
                        f"wall clock and {big['adapter_vs_bare_cpu']:.2f}x per CPU second (target >= 0.8x). Two worker "
                        f"processes run at {big['workers_vs_adapter']:.2f}x the in-process loop in wall clock and "
                        f"{big['workers_vs_adapter_cpu']:.2f}x per CPU second.")
    meta = {
        "steps": args.steps, "seeds": args.seeds, "eval_interval": args.eval_interval,
        "eval_episodes": args.eval_episodes, "overrides": cell_overrides(args), "png": f"{out.name}.png",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": round(time.perf_counter() - t0, 1),
        "machine": f"{os.cpu_count()} CPU cores shared with other jobs, CPU torch, run under nice -n 10",
        "command": "python bench/pettingzoo.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "form_verdict": form_verdict,
        "throughput": {which: json.loads(p.read_text()) for which in ("ours", "benchmarl")
                       if (p := out.with_name(f"{out.name}_throughput_{which}.json")).is_file()},
        "benchmarl_cells": json.loads(bm_path.read_text()) if bm_path.is_file() else None,
        "notes": [
            "- BenchMARL figures are the issue's (BenchMARL 1.5.2, packaged defaults, its machine); ratios compare "
            "rates from different machines and are only indicative. End-to-end env-steps/s here includes the "
            "periodic greedy evaluations and checkpoints.",
            *(f"- {n}" for n in args.note),
        ],
    }
    atomic_write_text(out.with_name(out.name + ".json"),
                      json.dumps({"meta": meta, "form": form, "summary": summary, "cells": cells}, indent=1) + "\n")
    plot(summary, out.with_name(out.name + ".png"), f"{ENV_ID}\n{args.steps:,} env steps per run, mean over seeds and 95% t-CI",
         peer_curves(meta["benchmarl_cells"]))
    atomic_write_text(out.with_name(out.name + ".md"), markdown(meta, form, summary, cells))
    print(f"wrote {out}.{{json,md,png}} in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
