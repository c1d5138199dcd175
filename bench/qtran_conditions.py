"""Has QTRAN transformed Q_jt? Conditions (4a)/(4b) and the agents' greedy actions after training, per cell.

QTRAN's agents act on their own Q_i, which only L_opt and L_nopt fit to the joint network's ranking of joint
actions (Son et al. 2019, Theorem 1). When Fig. 4 is not reproduced (``bench/paper_predator_prey.py``), this says
where the chain breaks. Each cell trains one algorithm on one env with ``paper_predator_prey``'s settings for its
QTRAN part, then reads 64 episodes from the run's own replay and, at every real transition, enumerates all
``A^N`` joint actions (so only small games: ``A^N <= 1024``) to measure:

- ``opt_gap``: mean |Q'_jt(u_bar) - Q_jt(u_bar) + V_jt| (condition (4a); 0 when it holds);
- ``nopt_worst``: mean over states of max(0, -min_u [Q'_jt(u) - Q_jt(u) + V_jt]) ((4b); 0 when it holds);
- ``argmax_match``: share of states where the agents' greedy joint action is Q_jt's argmax;
- ``qjt_spread_actions`` / ``qjt_spread_states``: std of Q_jt over the joint actions of a state (mean over
  states) against the std over states of its mean: how much the joint network tells actions apart;
- for every algorithm: the greedy action histogram and ``top_share``, the share of states whose greedy action is
  the agent's single most frequent one (1.0: a state-independent policy).

Cells are resumable (one JSON per cell under ``<out>_cells/``; rerunning skips finished ones). Writes
``<out>.json`` and ``<out>.md``.

    nice .venv/bin/python bench/qtran_conditions.py --punishment 1.5 --steps 60000 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from marlctl.agents.files import atomic_write_text  # noqa: E402
from paper_predator_prey import QTRAN_ENV, common, source_commit  # noqa: E402

ALGOS = ("qtran-base", "qtran-alt", "qmix", "vdn")
MAX_JOINT_ACTIONS = 1024


def measure(run: Any, episodes: int = 64, seed: int = 0) -> dict[str, Any]:
    """The conditions and greedy statistics of a trained run, on ``episodes`` episodes of its replay."""
    import torch
    from marlctl.agents.recurrent import masked_greedy

    learner, spec = run.algo.learner, run.spec
    batch = run.algo.buffer.sample(episodes, np.random.default_rng(seed))
    N, A = spec.n_agents, spec.n_actions
    out: dict[str, Any] = {}
    with torch.no_grad():
        T = batch.max_t
        q_BTNA, h_BTNH = learner.agent_features(batch)
        q, h, avail, state = q_BTNA[:, :T], h_BTNH[:, :T], batch.avail[:, :T], batch.state[:, :T]
        real = batch.filled[:, :T].bool()
        u_bar = masked_greedy(q, avail)  # [B, T, N]
        greedy = u_bar[real]  # [R, N]
        hist = torch.stack([torch.bincount(greedy[:, i], minlength=A) for i in range(N)])  # [N, A]
        out["greedy_histogram"] = hist.sum(0).tolist()
        out["top_share"] = float((hist.max(-1).values.float() / max(1, greedy.shape[0])).mean())
        joint_values = getattr(learner, "joint_values", None)  # QTRAN learners: Q_jt at given joint actions
        if callable(joint_values) and A ** N <= MAX_JOINT_ACTIONS:
            q_jt, q_prime, ok = [], [], []
            for ja in itertools.product(range(A), repeat=N):
                u = torch.tensor(ja, device=q.device).view(1, 1, N).expand(*u_bar.shape)
                q_jt.append(joint_values(batch, u))
                q_prime.append(learner.taken(q, u).sum(-1))
                ok.append(avail.gather(-1, u.unsqueeze(-1)).squeeze(-1).all(-1))  # every agent can take its u_i
            Q, Qp, ok_ = torch.stack(q_jt, -1), torch.stack(q_prime, -1), torch.stack(ok, -1)  # [B, T, A^N]
            v_jt = learner.joint(h, u_bar, state)[1]  # V_jt(tau) does not depend on the joint action
            d = Qp + v_jt.unsqueeze(-1) - Q
            place = torch.tensor([A ** (N - 1 - i) for i in range(N)], device=q.device)
            bar = (u_bar * place).sum(-1, keepdim=True)  # index of u_bar among the joint actions
            # Joint actions some agent cannot take in that state are left out of the max / min / spread.
            out["opt_gap"] = float(d.gather(-1, bar).squeeze(-1)[real].abs().mean())
            out["nopt_worst"] = float((-d.masked_fill(~ok_, float("inf")).min(-1).values).clamp(min=0)[real].mean())
            best = Q.masked_fill(~ok_, float("-inf")).argmax(-1, keepdim=True)
            out["argmax_match"] = float((best == bar).squeeze(-1)[real].float().mean())
            Qm = Q.masked_fill(~ok_, float("nan"))[real].cpu().numpy()
            out["qjt_spread_actions"] = float(np.nanmean(np.nanstd(Qm, axis=-1)))
            out["qjt_spread_states"] = float(np.nanmean(Qm, axis=-1).std())
            out["v_jt_mean"] = float(v_jt[real].mean())
    return out


def run_cell(algo: str, env_id: str, seed: int, args: argparse.Namespace, cells: Path) -> dict[str, Any]:
    from marlctl.envs import env_spec
    from marlctl.trainer.config import load_config
    from marlctl.trainer.run import TrainingRun
    from rich.console import Console

    name = f"{algo}_{env_id.replace(':', '_').replace(',', '_').replace('=', '')}_s{seed}"
    path = cells / f"{name}.json"
    overrides = [*common("qtran", args.steps), *args.set]
    if path.is_file():
        rec = json.loads(path.read_text())
        if rec["steps"] == args.steps and rec["overrides"] == overrides:
            return rec
    cfg = load_config(algo, env_id, overrides=overrides, steps=args.steps, seed=seed, device="cpu")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qtran_conditions_") as tmp:
        run = TrainingRun(cfg, Path(tmp) / name, env_spec(env_id), Console(quiet=True))
        try:
            run.loop_to_end()
            rec = {"algo": algo, "env_id": env_id, "seed": seed, "steps": args.steps, "overrides": overrides,
                   "commit": source_commit(), "final_eval_return": run.last_eval.get("eval/return"),
                   "final_eval_score": run.last_eval.get("eval/score"),
                   "last_train": {k: v for k, v in run.last_train.items() if k.startswith(("loss/", "train/opt",
                                                                                           "train/nopt", "train/v_jt",
                                                                                           "train/q_jt"))},
                   **measure(run), "wall_s": round(time.perf_counter() - t0, 1)}
        finally:
            run.close()
    atomic_write_text(path, json.dumps(rec, indent=1) + "\n")
    return rec


def markdown(meta: dict[str, Any], recs: list[dict[str, Any]]) -> str:
    def cell(r: dict[str, Any], k: str, fmt: str = ".2f") -> str:
        return "-" if r.get(k) is None else format(r[k], fmt)

    lines = ["# QTRAN's conditions after training: has Q_jt been transformed?", "",
             f"Command: `{meta['command']}` ({meta['date']}, {meta['machine']}). Settings: "
             f"`paper_predator_prey.py`'s QTRAN part at {meta['steps']:,} env steps: "
             + ", ".join(f"`{o}`" for o in meta["overrides"]) + ". Measured on 64 episodes of each run's replay at "
             "the end of training, every joint action enumerated (see the module docstring for each column).", "",
             "| env | algorithm | seed | final greedy return | opt_gap (4a) | nopt_worst (4b) | greedy = argmax Q_jt | "
             "Q_jt std over actions | over states | V_jt mean | top_share | greedy actions (histogram) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in recs:
        lines.append(f"| `{r['env_id']}` | {r['algo']} | {r['seed']} | {cell(r, 'final_eval_return', '.1f')} | "
                     f"{cell(r, 'opt_gap')} | {cell(r, 'nopt_worst')} | {cell(r, 'argmax_match')} | "
                     f"{cell(r, 'qjt_spread_actions')} | {cell(r, 'qjt_spread_states')} | {cell(r, 'v_jt_mean', '.1f')}"
                     f" | {r['top_share']:.2f} | {r['greedy_histogram']} |")
    lines += ["", *meta["notes"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--punishment", type=float, nargs="+", default=[1.5], help="P of predator_prey_qtran")
    p.add_argument("--env", default="", help="any env id instead (small joint action space for the QTRAN columns)")
    p.add_argument("--algos", default=",".join(ALGOS))
    p.add_argument("--steps", type=int, default=60000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], help="extra config override k=v (repeatable)")
    p.add_argument("--note", action="append", default=[], help="a line for the Markdown's notes (repeatable)")
    p.add_argument("--out", type=Path, default=Path("bench/results/qtran_conditions"))
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cells = args.out.with_name(args.out.name + "_cells")
    cells.mkdir(parents=True, exist_ok=True)
    envs = [args.env] if args.env else [QTRAN_ENV.format(p=pv) for pv in args.punishment]
    recs = []
    for env_id in envs:
        for algo in args.algos.split(","):
            for seed in args.seeds:
                recs.append(run_cell(algo, env_id, seed, args, cells))
                r = recs[-1]
                print(f"{algo} {env_id} seed {seed}: return {r['final_eval_return']:.1f}, opt_gap "
                      f"{r.get('opt_gap', float('nan')):.2f}, top_share {r['top_share']:.2f} ({r['wall_s']} s)",
                      flush=True)
    meta = {"command": "python bench/qtran_conditions.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": args.steps,
            "overrides": [*common("qtran", args.steps), *args.set],
            "machine": f"{os.cpu_count()} CPU cores, CPU torch, one thread per run",
            "notes": [f"- {n}" for n in args.note]}
    atomic_write_text(args.out.with_suffix(".json"), json.dumps({"meta": meta, "cells": recs}, indent=1) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(meta, recs))
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
