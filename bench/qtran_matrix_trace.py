"""QTRAN on one random 3x3 game (Table 6's protocol), traced: does the greedy joint action stay on the optimum?

Trains one QTRAN variant on game ``--game`` of ``trainer.matrix_runs.random_payoff`` with the matrix family's
packaged defaults plus any ``--set``, and every ``--every`` env steps reads the learned tables: the agents'
greedy joint action, Q'_jt(optimum) - Q'_jt(greedy) (negative: the agents miss the optimum), V_jt, condition
(4b) at the optimum (Q' - Q^_jt + V_jt, negative: violated), the largest |Q_jt - payoff| and each Q_i. It shows
how a cell that reached the optimum can leave it, which the end-of-training table cannot.

    .venv/bin/python bench/qtran_matrix_trace.py --algo qtran-base --game 12 --out bench/results/qtran_trace_random_12
    .venv/bin/python bench/qtran_matrix_trace.py --algo qtran-base --game 12 --set optim.eps=0.001 \\
        --out bench/results/qtran_trace_random_12_eps1e-3
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from marlctl.agents.files import atomic_write_text


def trace(algo: str, game: int, steps: int, every: int, overrides: list[str]) -> list[dict]:
    import torch
    from marlctl.trainer.learners.matrix_tables import matrix_tables
    from marlctl.trainer.matrix_runs import Cell, cell_algorithm, payoff_tuple, random_payoff

    # The benchmark's cell for this game (its seed is the game's index): trained the same way, read every `every`.
    cell = Cell(algo=algo, name=f"random_{game}", steps=steps, seed=game, payoff=payoff_tuple(random_payoff(game)),
                overrides=tuple(overrides))
    rows: list[dict] = []
    with cell_algorithm(cell) as (alg, payoff):
        optimum = tuple(int(a) for a in np.unravel_index(int(payoff.argmax()), payoff.shape))
        next_at = every
        while alg.env_steps < steps:
            alg.train_iteration()
            if alg.env_steps < next_at and alg.env_steps < steps:
                continue
            next_at += every
            first = alg.buffer.gather(np.arange(1))
            t = matrix_tables(alg.learner, first)
            with torch.no_grad():
                _, h = alg.learner.agent_features(first)
                _, v = alg.learner.joint(h[:, :1], first.actions, first.state[:, :1])
            v_jt = float(v[0, 0])
            rows.append({
                "env_steps": int(alg.env_steps), "greedy": list(t.greedy), "optimum": list(optimum),
                "margin": float(t.q_prime[optimum] - t.q_prime[t.greedy]), "v_jt": v_jt,
                "cond_4b_at_optimum": float(t.q_prime[optimum] - t.q_joint[optimum] + v_jt),
                "max_abs_err": float(np.abs(t.q_joint - payoff).max()), "q_i": t.q_i.round(4).tolist(),
            })
            print(f"{rows[-1]['env_steps']:>6} greedy {tuple(t.greedy)} margin {rows[-1]['margin']:+.4f} "
                  f"(4b) {rows[-1]['cond_4b_at_optimum']:+.4f} |Q_jt - R| {rows[-1]['max_abs_err']:.4f}", flush=True)
    return rows


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"# {meta['algo']} on random_{meta['game']} (optimum {tuple(rows[0]['optimum'])}), traced", "",
             f"Matrix family defaults plus `{' '.join(meta['overrides']) or '(none)'}`, seed {meta['game']}. "
             f"Command: `{meta['command']}`.", "",
             "| env steps | greedy | Q'(opt) - Q'(greedy) | (4b) at optimum | V_jt | max abs(Q_jt - payoff) | Q_1 | Q_2 |",
             "|---:|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        q = r["q_i"]
        lines.append(f"| {r['env_steps']} | {tuple(r['greedy'])} | {r['margin']:+.4f} | {r['cond_4b_at_optimum']:+.4f} | "
                     f"{r['v_jt']:+.3f} | {r['max_abs_err']:.4f} | {q[0]} | {q[1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", choices=["qtran-base", "qtran-alt"], default="qtran-base")
    p.add_argument("--game", type=int, required=True, help="game (and seed) of the random family (game seed 0)")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--every", type=int, default=1000, help="env steps between reads of the tables")
    p.add_argument("--set", action="append", default=[], help="section.key=value on top of the matrix defaults")
    p.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md are written)")
    args = p.parse_args()
    if args.steps < 1 or args.every < 1:
        p.error("--steps and --every must be >= 1")
    command = (f"python bench/qtran_matrix_trace.py --algo {args.algo} --game {args.game} --steps {args.steps} "
               f"--every {args.every}" + "".join(f" --set {o}" for o in args.set) + f" --out {args.out}")
    rows = trace(args.algo, args.game, args.steps, args.every, args.set)
    meta = {"algo": args.algo, "game": args.game, "steps": args.steps, "overrides": args.set, "command": command}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1))
    atomic_write_text(args.out.with_suffix(".md"), markdown(meta, rows))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
