"""TAD-PPO benchmark: didactic learning curves, SMAX/GRF win rates and the paper's training-time breakdown (Table 4).

    python bench/tad.py curves  --out bench/results/tad [--envs matrix:tad10,hallway] [--steps 20000] [--seeds 0,1,2]
    python bench/tad.py curves  --tag value --algos vdn,qmix,qtran-base,ow-qmix   (the value methods' curves)
    python bench/tad.py winrate --out bench/results/tad [--envs smax:3m] [--steps 20000] [--points 5]
    python bench/tad.py timing  --out bench/results/tad [--envs smax:3m,smax:10m_vs_11m] [--iterations 5]
    python bench/tad.py distill --out bench/results/tad [--seeds 0,1,...,9]   (Eq. 6 sample vs greedy targets)
    python bench/tad.py report  --out bench/results/tad

Every section writes ``<out>/<section>.json``; ``report`` renders ``<out>/tad.md`` and ``<out>/*.png`` from
whatever sections exist. Budgets are explicit arguments and are recorded in the JSON. Runs on CPU with one
torch thread per process (the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from marlctl.agents.files import atomic_write_text

POLICY_ALGOS = ("tad-ppo", "mappo")
# Table 4 of the paper (TAD-PPO / MAPPO, 1M steps): action inference, env simulation, policy training, whole.
PAPER_TABLE4 = {
    "smax:3m": {"inference": 3.9, "simulation": 1.01, "training": 1.54, "whole": 1.91},
    "smax:10m_vs_11m": {"inference": 10.0, "simulation": 1.0, "training": 2.72, "whole": 2.76},
}


def build(algo: str, env_id: str, seed: int, overrides: list[str]):
    import torch
    from marlctl.envs import env_spec
    from marlctl.trainer.config import load_config
    from marlctl.trainer.registry import algorithm_spec

    cfg = load_config(algo, env_id, overrides=overrides, seed=seed)
    return algorithm_spec(algo).build(cfg, env_spec(env_id), torch.device("cpu")), cfg


def _train_with_evals(algo: str, env_id: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one run for ``args.steps`` env steps with ``args.points`` greedy evaluations along the way."""
    a, cfg = build(algo, env_id, seed, args.set if algo in POLICY_ALGOS else args.value_set)
    t0, points, next_eval = time.perf_counter(), [], 0
    while True:
        if a.env_steps >= next_eval:
            ev = a.evaluate(args.eval_episodes)
            points.append({"env_steps": a.env_steps, **ev})
            next_eval += args.steps // args.points
        if a.env_steps >= args.steps:
            break
        a.train_iteration()
    run = {"env": env_id, "algo": algo, "seed": seed, "wall_s": time.perf_counter() - t0,
           "num_envs": cfg.env.num_envs, "points": points}
    last = points[-1]
    print(f"{env_id} {algo} seed {seed}: return {last['eval/return']:.2f} win {last.get('eval/win_rate', 0):.2f}"
          + (f" joint {last['eval/joint_return']:.2f}" if "eval/joint_return" in last else "")
          + f" after {a.env_steps} steps ({run['wall_s']:.0f} s)", flush=True)
    return run


def curves(args: argparse.Namespace) -> dict[str, Any]:
    """Greedy evaluation curves per env, algorithm and seed: TAD-PPO-T (joint) and TAD-PPO (distilled) from one
    tad-ppo run, MAPPO, and whatever value methods ``--algos`` names. ``winrate`` is the same on SMAX/GRF (the
    report plots win rate instead of return); an env whose backend is not installed is skipped and listed."""
    from marlctl.envs import list_families

    installed = {fam.name: ok for fam, ok, _ in list_families()}
    out: dict[str, Any] = {"steps": args.steps, "seeds": args.seeds, "eval_points": args.points, "runs": [],
                           "skipped": []}
    for env_id in args.envs:
        family = env_id.split(":", 1)[0].split(",", 1)[0]
        if not installed.get(family, False):
            out["skipped"].append({"env": env_id, "why": f"backend of {family} not installed"})
            continue
        for algo in args.algos:
            for seed in args.seeds:
                out["runs"].append(_train_with_evals(algo, env_id, seed, args))
    return out


def timing(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds in action inference, env simulation and policy training per env step, TAD-PPO vs MAPPO.

    The two algorithms' iterations alternate, so load from other processes on the shared machine hits
    both alike; each has its own (warmed-up, JIT-compiled) batched env."""
    out: dict[str, Any] = {"iterations": args.iterations, "results": [], "paper": PAPER_TABLE4}
    keys = ("inference", "simulation", "training")
    for env_id in args.envs:
        algos = {name: build(name, env_id, 0, args.set) for name in ("tad-ppo", "mappo")}
        for a, _ in algos.values():
            a.train_iteration()  # warm-up: JIT compilation of the simulator, allocator
        row: dict[str, Any] = {"env": env_id}
        for name, (_, cfg) in algos.items():
            row[name] = {"env_steps": 0, "num_envs": cfg.env.num_envs, **{k: 0.0 for k in keys}}
        for _ in range(args.iterations):
            for name, (a, _) in algos.items():
                s = a.train_iteration()
                row[name]["env_steps"] += s.env_steps
                for k in keys:
                    row[name][k] += s.metrics[f"time/{k}"]
        for name in algos:
            row[name]["whole"] = sum(row[name][k] for k in keys)
        per_step = {name: {k: row[name][k] / row[name]["env_steps"] for k in (*keys, "whole")} for name in algos}
        row["ratio"] = {k: per_step["tad-ppo"][k] / per_step["mappo"][k] for k in (*keys, "whole")}
        out["results"].append(row)
        print(env_id, {k: round(v, 2) for k, v in row["ratio"].items()}, "paper", PAPER_TABLE4.get(env_id), flush=True)
    return out


DISTILL_TARGETS = ("sample", "greedy")


def distill(args: argparse.Namespace) -> dict[str, Any]:
    """matrix:tad10 trained to the end of the packaged entropy anneal with each distillation target: Eq. 6's
    sampled joint actions or the coordination policy's greedy one. Per seed: the greedy return of the joint
    policy (TAD-PPO-T) and of the distilled decentralized agents, over enough episodes (640) that every one of
    the ten matrices is played (a mean of 10 means the optimum on all ten). Resumable: finished cells of the
    JSON are kept and skipped."""
    path = args.out / "distill.json"
    out = _load(path) or {"env": "matrix:tad10", "eval_episodes": 640, "runs": []}
    done = {(r["target"], r["seed"]) for r in out["runs"]}
    for seed in args.seeds:
        for target in DISTILL_TARGETS:
            if (target, seed) in done:
                continue
            a, _ = build("tad-ppo", "matrix:tad10", seed, [*args.set, f"algo.distill_target={target}"])
            t0 = time.perf_counter()
            while a.env_steps < a.opts.entropy_anneal_steps:
                a.train_iteration()
            ev = a.evaluate(out["eval_episodes"])
            out["runs"].append({"target": target, "seed": seed, "env_steps": a.env_steps,
                                "joint_return": ev["eval/joint_return"], "return": ev["eval/return"],
                                "wall_s": time.perf_counter() - t0})
            print(f"distill {target} seed {seed}: joint {ev['eval/joint_return']:.2f} distilled "
                  f"{ev['eval/return']:.2f} ({out['runs'][-1]['wall_s']:.0f} s)", flush=True)
            atomic_write_text(path, json.dumps(out, indent=1))
    return out


def _distill_section(dis: dict[str, Any]) -> list[str]:
    lines = [f"## Distillation target on {dis['env']} (greedy return per matrix, mean of {dis['eval_episodes']} "
             "episodes; 10 = the optimum on all ten)", "",
             f"Command: `python bench/tad.py {' '.join(dis.get('argv', []))}`", "",
             "| target | seeds | joint (TAD-PPO-T) | distilled (TAD-PPO) | seeds with distilled < joint |",
             "|---|---|---|---|---|"]
    for target in DISTILL_TARGETS:
        runs = sorted((r for r in dis["runs"] if r["target"] == target), key=lambda r: r["seed"])
        if not runs:
            continue
        short = [r["seed"] for r in runs if r["return"] < r["joint_return"] - 1e-6]
        joint = " ".join(f"{r['joint_return']:.2f}" for r in runs)
        dec = " ".join(f"{r['return']:.2f}" for r in runs)
        lines.append(f"| {target} | {len(runs)} | {joint} | {dec} | {short or 'none'} |")
    return [*lines, ""]


def report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lines = ["# TAD-PPO benchmark", ""]
    for cur_path in sorted(args.out.glob("curves*.json")):
        lines += _curves_section(args, cur_path, plt, np)
    _rest(args, lines, plt, np)


SERIES = (("TAD-PPO-T (joint)", "tad-ppo", "eval/joint_return"), ("TAD-PPO (distilled)", "tad-ppo", "eval/return"),
          ("MAPPO", "mappo", "eval/return"))


def _series(runs: list[dict[str, Any]], key_of_return: str) -> list[tuple[str, str, str]]:
    """(label, algo, metric) of every curve in ``runs``: TAD-PPO's two policies, MAPPO, then the value methods."""
    algos = list(dict.fromkeys(r["algo"] for r in runs))
    out = [(label, algo, key.replace("return", key_of_return)) for label, algo, key in SERIES if algo in algos]
    out += [(algo, algo, f"eval/{key_of_return}") for algo in algos if algo not in POLICY_ALGOS]
    return out


def _curve_table(args: argparse.Namespace, runs: list[dict[str, Any]], metric: str, tag: str, plt: Any, np: Any
                 ) -> list[str]:
    """One row per env (final value, mean and per seed), one PNG per env with every series."""
    series = _series(runs, metric)
    lines = ["| env | " + " | ".join(label for label, _, _ in series) + " |", "|---|" + "---|" * len(series)]
    for env_id in sorted({r["env"] for r in runs}):
        env_runs = [r for r in runs if r["env"] == env_id]
        fig, ax = plt.subplots(figsize=(6, 4))
        cells = []
        for label, algo, key in series:
            rs = [r for r in env_runs if r["algo"] == algo]
            if not rs:
                cells.append("-")
                continue
            n = min(len(r["points"]) for r in rs)
            x = np.array([p["env_steps"] for p in rs[0]["points"][:n]])
            y = np.array([[p[key] for p in r["points"][:n]] for r in rs])
            ax.plot(x, y.mean(0), label=label)
            ax.fill_between(x, y.min(0), y.max(0), alpha=0.2)
            finals = y[:, -1]
            cells.append(f"{finals.mean():.2f} (seeds: {', '.join(f'{v:.2f}' for v in finals)})")
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"greedy eval {metric.replace('_', ' ')}")
        ax.set_title(env_id)
        ax.legend(fontsize=8)
        png = args.out / f"{'winrate' if metric == 'win_rate' else 'curve'}_{env_id.replace(':', '_').replace(',', '_')}" \
                         f"{'_' + tag if tag else ''}.png"
        fig.savefig(png, dpi=100, bbox_inches="tight")
        plt.close(fig)
        lines.append(f"| {env_id} | " + " | ".join(cells) + " |")
    return lines + [""]


def _curves_section(args: argparse.Namespace, cur_path: Path, plt: Any, np: Any) -> list[str]:
    cur = _load(cur_path)
    if not cur:
        return []
    tag = cur_path.stem.removeprefix("curves").lstrip("_")
    lines = [f"## Didactic games{' (' + tag + ')' if tag else ''}: greedy eval return, {cur['steps']} env steps, "
             f"seeds {cur['seeds']}", "",
             f"Command: `python bench/tad.py {' '.join(cur.get('argv', []))}`", ""]
    return lines + _curve_table(args, cur["runs"], "return", tag, plt, np)


def _rest(args: argparse.Namespace, lines: list[str], plt: Any, np: Any) -> None:
    for win_path in sorted(args.out.glob("winrate*.json")):
        win = _load(win_path)
        if not win or "runs" not in win:
            continue
        tag = win_path.stem.removeprefix("winrate").lstrip("_")
        lines += [f"## Win rate vs env steps ({win['steps']} env steps, seeds {win['seeds']}, greedy eval)", "",
                  f"Command: `python bench/tad.py {' '.join(win.get('argv', []))}`", ""]
        lines += _curve_table(args, win["runs"], "win_rate", tag, plt, np)
        for s in win["skipped"]:
            lines.append(f"- {s['env']}: skipped ({s['why']})")
        walls = {}
        for r in win["runs"]:
            walls.setdefault((r["env"], r["algo"]), []).append(r["wall_s"])
        lines.append("Wall time per run (CPU, one torch thread): " + "; ".join(
            f"{env} {algo} {np.mean(w):.0f} s" for (env, algo), w in walls.items()) + ".")
        lines.append("")
    dis = _load(args.out / "distill.json")
    if dis and dis["runs"]:
        lines += _distill_section(dis)
    tim = _load(args.out / "timing.json")
    if tim:
        lines += [f"## Training-time breakdown, TAD-PPO / MAPPO per env step ({tim['iterations']} iterations)", "",
                  f"Command: `python bench/tad.py {' '.join(tim.get('argv', []))}`", "",
                  "| env | inference | simulation | training | whole | paper (inference, simulation, training, whole) |",
                  "|---|---|---|---|---|---|"]
        for r in tim["results"]:
            p = PAPER_TABLE4.get(r["env"], {})
            ratio = r["ratio"]
            lines.append(f"| {r['env']} | {ratio['inference']:.2f} | {ratio['simulation']:.2f} | "
                         f"{ratio['training']:.2f} | {ratio['whole']:.2f} | "
                         f"{p.get('inference', '-')}, {p.get('simulation', '-')}, {p.get('training', '-')}, "
                         f"{p.get('whole', '-')} |")
        lines.append("")
    atomic_write_text(args.out / "tad.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", choices=["curves", "winrate", "timing", "distill", "report"])
    p.add_argument("--out", type=Path, default=Path("bench/results/tad"))
    p.add_argument("--envs", type=lambda s: s.split(";") if ";" in s else s.split(","), default=None,
                   help="env ids, comma-separated (use ; when an id has options)")
    p.add_argument("--steps", type=int, default=20_000, help="training budget per run in env steps")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--points", type=int, default=10, help="evaluations per curve")
    p.add_argument("--eval-episodes", type=int, default=64)
    p.add_argument("--iterations", type=int, default=5, help="timed iterations per algorithm (timing)")
    p.add_argument("--set", action="append", default=[], help="config override section.key=value (repeatable)")
    p.add_argument("--algos", type=lambda s: s.split(","), default=["tad-ppo", "mappo"],
                   help="algorithms of curves/winrate (value methods too, e.g. vdn,qmix,qtran-base,ow-qmix)")
    p.add_argument("--value-set", action="append", default=[],
                   help="config override for the value methods only (--set applies to tad-ppo and mappo)")
    p.add_argument("--tag", default="", help="suffix of the section's JSON file (keeps several curve settings)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    defaults = {"curves": ["matrix:tad10", "hallway"], "winrate": ["smax:3m", "grf:academy_3_vs_1_with_keeper"],
                "timing": ["smax:3m", "smax:10m_vs_11m"], "distill": ["matrix:tad10"]}
    if args.section == "report":
        report(args)
        return 0
    args.envs = args.envs or defaults[args.section]
    result = {"curves": curves, "winrate": curves, "timing": timing, "distill": distill}[args.section](args)
    result["argv"] = sys.argv[1:]
    name = f"{args.section}_{args.tag}" if args.tag else args.section
    atomic_write_text(args.out / f"{name}.json", json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
