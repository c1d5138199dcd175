"""QTRAN paper Table 1 reproduced: learned Q_i, Q_jt / Q_tot on the 3x3 matrix game under full exploration.

Each algorithm trains on ``matrix:qtran`` with epsilon = 1 (uniform joint actions, the paper's "full
exploration"), through the real training loop, for every seed; the bench then reads the trained
networks' tables (``trainer.learners.matrix_tables``) and writes them beside the paper's Tables 1b-1f
as JSON and Markdown. Budget: ``--steps`` one-step episodes (the paper: 20,000 steps), 32 envs per
iteration and ``--updates`` gradient steps of 32 episodes per iteration (the paper does not state its
update cadence).

    .venv/bin/python bench/paper_qtran.py --steps 20000 --seeds 0 1 2 --out bench/results

``--experiment random``: QTRAN Table 6's protocol, ``--games`` random 3x3 games with U[0, 1) entries
(``trainer.matrix_runs.random_payoff``), each method trained once per game with the matrix family's
packaged defaults (one config for every game) for ``--steps`` env steps; reports how often the greedy
agents reach each game's optimum. ``--experiment two-peak``: QTRAN's 21x21 game (``matrix:qtran21``,
optimum (5, 15) = 10, lower peak (15, 5) = 5) per seed. Both are resumable: each finished (method, game,
seed) cell is saved in the results JSON at once and skipped on a rerun with the same settings.

    nice -n 10 .venv/bin/python bench/paper_qtran.py --experiment random --games 50 --steps 20000 --workers 2
    nice -n 10 .venv/bin/python bench/paper_qtran.py --experiment two-peak --seeds 0 1 2 --steps 20000
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from marlctl.agents.files import atomic_write_text

PAYOFF = [[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 0.0]]  # Table 1a; rows agent 1, columns agent 2
ACTIONS = "ABC"
# Tables 1b-1f (rows: agent 1's action, columns: agent 2's action).
PAPER: dict[str, dict] = {
    "qtran-base": {
        "q_1": [3.84, -2.06, -2.25], "q_2": [4.16, 2.29, 2.29],
        "q_joint": [[8.00, -12.02, -12.02], [-12.00, 0.00, 0.00], [-12.00, 0.00, -0.01]],
        "q_prime": [[8.00, 6.13, 6.12], [2.10, 0.23, 0.23], [1.92, 0.04, 0.04]],
        "greedy": "AA", "source": "Table 1b-1d (QTRAN; the paper does not say base or alt)",
    },
    "vdn": {
        "q_1": [-2.29, -1.22, -0.73], "q_2": [-3.14, -2.29, -2.41],
        "q_joint": [[-5.42, -4.57, -4.70], [-4.35, -3.51, -3.63], [-3.87, -3.02, -3.14]],
        "greedy": "CB", "source": "Table 1e",
    },
    "qmix": {
        "q_1": [-1.02, 0.11, 0.10], "q_2": [-0.92, 0.00, 0.01],
        "q_joint": [[-8.08, -8.08, -8.08], [-8.08, 0.01, 0.03], [-8.08, 0.01, 0.02]],
        "greedy": "BC", "source": "Table 1f",
    },
}
PAPER["qtran-alt"] = PAPER["qtran-base"]


def train_tables(algo: str, seed: int, steps: int, updates: int, workdir: Path) -> dict:
    """Train ``algo`` on the matrix game and return its tables and greedy evaluation."""
    from marlctl.envs import env_spec
    from marlctl.trainer.config import load_config
    from marlctl.trainer.learners.matrix_tables import matrix_tables
    from marlctl.trainer.run import TrainingRun
    from rich.console import Console

    overrides = ["env.num_envs=32", f"learner.updates_per_iteration={updates}", "replay.batch_size=32",
                 "run.progress=false", "run.eval_interval=0", "run.eval_episodes=8", "run.save_interval=0"]
    if algo.startswith("qtran"):
        overrides.append("mixer.joint_embed_dim=32")  # appendix C: width 32 in the matrix game
    if algo == "remix":
        overrides.append("learner.td_lambda=0")
    cfg = load_config(algo, "matrix:qtran", overrides=overrides, steps=steps, seed=seed, device="cpu")
    run_dir = workdir / f"{algo}_s{seed}"
    run_dir.mkdir(parents=True)
    run = TrainingRun(cfg, run_dir, env_spec("matrix:qtran"), Console(quiet=True))
    t0 = time.perf_counter()
    summary = run.loop_to_end()
    tables = matrix_tables(run.algo.learner, run.algo.buffer.gather(np.arange(1)))
    run.close()
    out = tables.to_dict()
    out.update(seed=seed, greedy_name="".join(ACTIONS[a] for a in tables.greedy),
               eval_return=summary.last_eval.get("eval/return"), wall_s=time.perf_counter() - t0,
               updates=summary.updates, max_abs_err_vs_payoff=float(np.abs(tables.q_joint - PAYOFF).max()))
    return out


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def fmt_table(m: list[list[float]], row_q: list[float] | None = None, col_q: list[float] | None = None) -> list[str]:
    head = "| u1 \\ u2 | " + " | ".join(
        f"{a}" + (f" ({col_q[i]:.2f})" if col_q else "") for i, a in enumerate(ACTIONS)) + " |"
    lines = [head, "|---|---|---|---|"]
    for i, a in enumerate(ACTIONS):
        label = a + (f" ({row_q[i]:.2f})" if row_q else "")
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in m[i]) + " |")
    return lines


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# QTRAN Table 1: the 3x3 non-monotonic matrix game, full exploration", "",
        f"Budget per run: {meta['steps']} one-step episodes (paper: 20,000 steps), epsilon = 1, "
        f"{meta['updates_per_iteration']} updates of 32 episodes per 32 episodes collected; seeds {meta['seeds']}. "
        f"Wall {meta['wall_s']:.0f} s on {meta['machine']}. Command: `{meta['command']}`.", "",
        "Q_i and Q'_jt are determined only up to IGM-preserving transformations, so compare greedy actions and "
        "Q_jt / Q_tot, not the individual utilities' values.", "",
        "| algorithm | greedy (u1,u2) per seed | paper greedy | Q_joint(A,A) mean | paper | eval return per seed |"
        " max abs(Q_joint - payoff) mean |", "|---|---|---|---|---|---|---|",
    ]
    for algo, runs in results["runs"].items():
        paper = PAPER.get(algo, {})
        qaa = np.mean([r["q_joint"][0][0] for r in runs])
        lines.append(
            f"| {algo} | {', '.join(r['greedy_name'] for r in runs)} | {paper.get('greedy', '-')} | {qaa:.2f} | "
            f"{paper['q_joint'][0][0] if paper else '-'} | {', '.join(_num(r['eval_return']) for r in runs)} | "
            f"{np.mean([r['max_abs_err_vs_payoff'] for r in runs]):.2f} |")
    lines += ["", "Payoff (Table 1a):", "", *fmt_table(PAYOFF), ""]
    for algo, runs in results["runs"].items():
        r = runs[0]
        name = "Q_jt" if algo.startswith("qtran") else "Q_tot"
        lines += [f"## {algo} (seed {r['seed']})", "", f"Ours: {name} with Q_1 (rows) and Q_2 (columns):", "",
                  *fmt_table(r["q_joint"], r["q_i"][0], r["q_i"][1]), ""]
        if algo.startswith("qtran"):
            lines += ["Ours: Q'_jt = Q_1 + Q_2:", "", *fmt_table(r["q_prime"]), ""]
        paper = PAPER.get(algo)
        if paper:
            lines += [f"Paper ({paper['source']}):", "", *fmt_table(paper["q_joint"], paper["q_1"], paper["q_2"]), ""]
            if "q_prime" in paper:
                lines += ["Paper Q'_jt:", "", *fmt_table(paper["q_prime"]), ""]
    lines += ["## Agreement with the paper", "", results["verdict"], ""]
    return "\n".join(lines)


def verdict(runs: dict) -> str:
    out = []
    for algo, rs in runs.items():
        found = sum(r["greedy_name"] == "AA" for r in rs)
        out.append(f"- {algo}: greedy (A, A) in {found}/{len(rs)} seeds; mean Q_joint(A,A) "
                   f"{np.mean([r['q_joint'][0][0] for r in rs]):.2f}.")
    out.append("- Paper: QTRAN plays (A, A) with Q_jt reproducing the payoff (Table 1c); VDN (C, B) and QMIX (B, C) "
               "miss it, QMIX's Q_tot flattening every A row/column to about -8 (Table 1f).")
    return "\n".join(out)


GAMES_OUT = {"random": "paper_qtran_random", "two-peak": "paper_qtran_two_peak"}


def games_cells(args: argparse.Namespace) -> list:
    """The (method, game, seed) cells of ``--experiment random`` / ``two-peak``."""
    from marlctl.trainer.matrix_runs import Cell, payoff_tuple, random_payoff

    if args.experiment == "random":
        return [Cell(algo=a, name=f"random_{g}", steps=args.steps, seed=g, overrides=tuple(args.set),
                     payoff=payoff_tuple(random_payoff(g, args.game_seed)))
                for g in range(args.games) for a in args.algos]
    return [Cell(algo=a, name="qtran21", steps=args.steps, seed=s, env_id="matrix:qtran21", overrides=tuple(args.set))
            for s in args.seeds for a in args.algos]


def _cell_key(d: dict) -> tuple:
    return d["algo"], d["name"], d["seed"], d["steps"], tuple(d.get("overrides", ()))


def _mean_cpu(rows: list[dict]) -> str:
    cpu = [r["cpu_s"] for r in rows if "cpu_s" in r]
    return f"{np.mean(cpu):.0f}" if cpu else "-"


def games_markdown(doc: dict) -> str:
    meta, rows = doc["meta"], doc["cells"]
    random_exp = meta["experiment"] == "random"
    title = ("QTRAN Table 6 protocol: random 3x3 games, entries U[0, 1)" if random_exp
             else "QTRAN's two-peak 21x21 game (matrix:qtran21): optimum (5, 15) = 10, lower peak (15, 5) = 5")
    lines = [f"# {title}", "",
             f"Each cell: one method trained on one game for {meta['steps']} env steps with the matrix family's packaged "
             f"defaults{' plus `' + ' '.join(meta['overrides']) + '`' if meta['overrides'] else ''} (one config for every "
             f"game: epsilon = 1, 32 envs, {meta['defaults'][meta['algos'][0]]['learner']['updates_per_iteration']} "
             f"updates of 32 episodes per iteration, "
             f"Adam 5e-4), then the agents' greedy "
             f"joint action is read. {meta['machine']}; {meta['workers']} worker processes. Command: `{meta['command']}`.",
             "", "| method | games | optimum reached | fraction | mean regret | mean wall s per cell | mean CPU s per cell |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for algo in meta["algos"]:
        rs = [r for r in rows if r["algo"] == algo]
        if not rs:
            continue
        hit = sum(r["reached"] for r in rs)
        regret = np.mean([r["best_payoff"] - r["greedy_payoff"] for r in rs])
        lines.append(f"| {algo} | {len(rs)} | {hit} | {hit / len(rs):.2f} | {regret:.3f} | "
                     f"{np.mean([r['wall_s'] for r in rs]):.0f} | {_mean_cpu(rs)} |")
    missed = [r for r in rows if not r["reached"]]
    lines += ["", "Misses (greedy joint action is not the optimum):", ""]
    if missed:
        lines += ["| method | game | seed | greedy | optimum | regret | best - second best | max abs(Q_joint - payoff) |",
                  "|---|---|---:|---|---|---:|---:|---:|"]
        for r in missed:
            lines.append(f"| {r['algo']} | {r['name']} | {r['seed']} | {tuple(r['greedy'])} | {tuple(r['optimum'])} | "
                         f"{r['best_payoff'] - r['greedy_payoff']:.4f} | {r['top_gap']:.4f} | {r['max_abs_err']:.3f} |")
    else:
        lines.append("none")
    if not random_exp:
        lines += ["", "| method | seed | greedy | payoff | max abs(Q_joint - payoff) |", "|---|---:|---|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['algo']} | {r['seed']} | {tuple(r['greedy'])} | {r['greedy_payoff']:.2f} | "
                         f"{r['max_abs_err']:.2f} |")
    return "\n".join(lines) + "\n"


def run_games(args: argparse.Namespace) -> None:
    from marlctl.trainer.config import load_config
    from marlctl.trainer.matrix_runs import run_cells

    out_json = args.out / f"{GAMES_OUT[args.experiment]}.json"
    cells = games_cells(args)
    wanted = {_cell_key({"algo": c.algo, "name": c.name, "seed": c.seed, "steps": c.steps,
                         "overrides": c.overrides}) for c in cells}
    # Every method's resolved matrix config (packaged defaults + --set): "defaults" change between commits, and a
    # cell saved under other ones is trained again, as is a cell whose own settings changed.
    defaults = json.loads(json.dumps({a: load_config(a, "matrix:qtran", overrides=list(args.set)).to_dict()
                                      for a in args.algos}))
    old = json.loads(out_json.read_text()) if out_json.is_file() else {"meta": {}, "cells": []}
    saved = old["meta"].get("defaults", {})
    done = [d for d in old["cells"] if _cell_key(d) in wanted and saved.get(d["algo"]) == defaults[d["algo"]]]
    have = {_cell_key(d) for d in done}
    todo = [c for c in cells if _cell_key({"algo": c.algo, "name": c.name, "seed": c.seed, "steps": c.steps,
                                           "overrides": c.overrides}) not in have]
    print(f"{len(done)} cells already done, {len(todo)} to run", flush=True)
    command = "python bench/paper_qtran.py " + " ".join(
        [f"--experiment {args.experiment}", f"--steps {args.steps}", "--algos", *args.algos]
        + ([f"--games {args.games}", f"--game-seed {args.game_seed}"] if args.experiment == "random"
           else ["--seeds", *map(str, args.seeds)]) + [f"--set {o}" for o in args.set] + [f"--workers {args.workers}"])
    meta = {"experiment": args.experiment, "steps": args.steps, "algos": args.algos, "overrides": args.set,
            "defaults": defaults,
            "workers": args.workers, "command": command,
            "machine": f"{os.cpu_count()} CPU cores (shared with other work), CPU torch, 1 thread per worker"}

    def save() -> None:
        order = {k: i for i, k in enumerate(_cell_key({"algo": c.algo, "name": c.name, "seed": c.seed,
                                                        "steps": c.steps, "overrides": c.overrides}) for c in cells)}
        doc = {"meta": meta, "cells": sorted(done, key=lambda d: order[_cell_key(d)])}
        atomic_write_text(out_json, json.dumps(doc, indent=1))
        atomic_write_text(out_json.with_suffix(".md"), games_markdown(doc))

    def on_result(r) -> None:
        done.append(r.to_dict())
        save()
        print(f"{r.algo} {r.name} seed {r.seed}: greedy {tuple(r.greedy)} optimum {tuple(r.optimum)} "
              f"reached={r.reached} ({r.wall_s:.0f} s)", flush=True)

    run_cells(todo, workers=args.workers, on_result=on_result)
    save()
    print(f"wrote {out_json} and {out_json.with_suffix('.md')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", choices=["table1", "random", "two-peak"], default="table1")
    p.add_argument("--algos", nargs="+", default=None,
                   help="table1: all six methods; random: qtran-alt qtran-base; two-peak: qtran-alt qtran-base vdn qmix")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--updates", type=int, default=8, help="table1: gradient updates per 32 collected episodes")
    p.add_argument("--games", type=int, default=50, help="random: number of games")
    p.add_argument("--game-seed", type=int, default=0, help="random: the family of games (random_payoff's seed)")
    p.add_argument("--set", action="append", default=[], help="random/two-peak: section.key=value for every cell")
    p.add_argument("--workers", type=int, default=2, help="random/two-peak: worker processes")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args()
    if args.experiment != "table1":
        args.algos = args.algos or (["qtran-alt", "qtran-base"] if args.experiment == "random"
                                    else ["qtran-alt", "qtran-base", "vdn", "qmix"])
        run_games(args)
        return
    args.algos = args.algos or ["qtran-base", "qtran-alt", "vdn", "qmix", "ow-qmix", "remix"]
    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="paper_qtran_") as tmp:
        for algo in args.algos:
            for seed in args.seeds:
                r = train_tables(algo, seed, args.steps, args.updates, Path(tmp))
                runs.setdefault(algo, []).append(r)
                print(f"{algo} seed {seed}: greedy {r['greedy_name']} Q(A,A)={r['q_joint'][0][0]:.2f} "
                      f"eval {r['eval_return']} ({r['wall_s']:.0f} s)", flush=True)
    results = {
        "meta": {"steps": args.steps, "updates_per_iteration": args.updates, "seeds": args.seeds,
                 "wall_s": time.perf_counter() - t0, "machine": f"{os.cpu_count()} CPU cores (shared), CPU torch",
                 "command": "python bench/paper_qtran.py " + " ".join(
                     [f"--steps {args.steps}", f"--updates {args.updates}", "--seeds",
                      *map(str, args.seeds), "--algos", *args.algos])},
        "paper": PAPER, "payoff": PAYOFF, "runs": runs, "verdict": verdict(runs),
    }
    atomic_write_text(args.out / "paper_qtran.json", json.dumps(results, indent=1))
    atomic_write_text(args.out / "paper_qtran.md", markdown(results))
    print(f"wrote {args.out / 'paper_qtran.json'} and {args.out / 'paper_qtran.md'}")


if __name__ == "__main__":
    main()
