"""Modified predator-prey learning curves: QTRAN Fig. 4a-c (QTRAN's own game, N = 2) and ReMIX §5.1 (smaller).

Part ``qtran`` (QTRAN §4, Appendix C.1, Table 5, Fig. 4a-c): QTRAN-base, QTRAN-alt, VDN and QMIX on
QTRAN's own game ``predator_prey_qtran:punishment=P`` (5x5, two predators, one prey, catching by line of
sight within the 5x5 view, +1 for a joint catch, -P for a lone one, prey regenerating, fixed 100 steps) at
P = 0.5, 1.0, 1.5, with the family's packaged trainer settings (feed-forward agents, three hidden layers of
64, Adam, epsilon 1 -> 0.1, target network every 100 episodes = 10^4 steps) and the budget-bound ones below.
Part ``remix`` (ReMIX Fig. 1, scaled down): ReMIX, QMIX, OW-QMIX on ReMIX's rules
``predator_prey:agents=4,prey=2,grid=7,punishment=1.5,reward=10,limit=100``.

Every cell (part, algorithm, env, seed) is one real training run (``trainer.run.train_run``) in its own run
directory under ``--workdir``; a finished cell's curve is saved as ``<out>/<name>/cells/<cell>.json`` with the
git commit the code ran at. Rerunning skips finished cells, resumes unfinished ones from their checkpoint and
starts missing ones; ``--shard I/N`` runs every N-th cell (start N processes to use N cores); ``--rebuild``
only rewrites JSON + Markdown + PNG from the finished cells. Budgets are far below the papers' (QTRAN: 10^7
steps) and are stated in the output.

    nice -n 10 .venv/bin/python bench/paper_predator_prey.py --parts qtran --steps 60000 --seeds 0 1 2 --tag _fig4

``--reach 1`` plays the QTRAN game's other reading of "catching" (a prey adjacent in a cardinal direction, not
anywhere in line within the view; ``predator_prey_qtran:reach=1``). Each setting's table also gives uniform
random play's return and catches, measured on the same game.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from marlctl.agents.files import atomic_path, atomic_write_text

QTRAN_ENV = "predator_prey_qtran:punishment={p}"
REMIX_ENV = "predator_prey:agents=4,prey=2,grid=7,punishment={p},reward=10,limit=100"
QTRAN_ALGOS = ("qtran-base", "qtran-alt", "vdn", "qmix")
REPO = Path(__file__).resolve().parents[1]


def common(part: str, steps: int) -> list[str]:
    """Budget-bound settings of every run of a part (the rest: packaged defaults of the algorithm and env)."""
    # Epsilon reaches its final value at 30% of the budget, as Table 5's 3*10^6 of 10^7 steps.
    shared = [f"exploration.epsilon_anneal_steps={steps * 3 // 10}", f"run.eval_interval={steps // 10}",
              "run.eval_episodes=16", f"run.log_interval={steps // 10}", f"run.save_interval={max(steps // 4, 1)}",
              "run.progress=false"]
    if part == "qtran":
        # 16 envs x 100 steps per iteration; 8 updates of 16 episodes each (every transition replayed ~8 times);
        # TD(lambda) 0.6 and a target network every 16 episodes carry the 100-step returns at this budget.
        return ["replay.batch_size=16", "replay.capacity=2000", "learner.updates_per_iteration=8",
                "learner.td_lambda=0.6", "learner.target_update_episodes=16", "optim.lr=0.001", *shared]
    return ["env.num_envs=8", "replay.batch_size=8", "replay.capacity=2000", "learner.updates_per_iteration=8",
            "learner.target_update_episodes=40", "exploration.epsilon_finish=0.1", "optim.optimizer=adam", *shared]


def qtran_env(p: float, reach: int) -> str:
    """The QTRAN game at penalty P; ``reach`` 0 = the game's default (in line within the view)."""
    return QTRAN_ENV.format(p=p) + (f",reach={reach}" if reach else "")


def experiments(punishments: tuple[float, ...], algos: tuple[str, ...], reach: int = 0) -> list[dict]:
    """(part, setting label, env id, algo, extra overrides) of every experiment."""
    out = []
    for p in punishments:
        for algo in algos:
            out.append({"part": "qtran", "setting": f"N=2, 5x5, P={p}" + (f", reach {reach}" if reach else ""),
                        "punishment": p, "env_id": qtran_env(p, reach), "algo": algo, "overrides": []})
    for algo in ("remix", "qmix", "ow-qmix"):
        extra = ["learner.td_lambda=0.6"] + (["algo.alpha=0.1"] if algo == "ow-qmix" else [])
        out.append({"part": "remix", "setting": "N=4, 2 prey, 7x7, p=-1.5", "punishment": 1.5,
                    "env_id": REMIX_ENV.format(p=1.5), "algo": algo, "overrides": extra})
    return out


def cell_name(exp: dict, seed: int) -> str:
    env = exp["env_id"].replace(":", "_").replace(",", "_").replace("=", "")
    return f"{exp['part']}_{exp['algo']}_{env}_s{seed}"


def source_commit() -> str:
    """The git commit of the code that runs (``-dirty`` when tracked files under envs/ agents/ trainer/ differ)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--",
                                "envs", "agents", "trainer"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty.strip() else "")


def read_run(run_dir: Path) -> dict | None:
    """A finished run's greedy-eval curve ``[env_steps, return, score]`` and totals, from its log (None: unfinished)."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    points, end = {}, None
    for line in log.read_text(encoding="utf-8").splitlines():
        ev = json.loads(line)
        if ev.get("event") == "eval":  # a resumed run evaluates again past its checkpoint: the later one counts
            points[ev["env_steps"]] = [ev["env_steps"], ev.get("eval/return"), ev.get("eval/score")]
        elif ev.get("event") == "end":
            end = ev
    if end is None:
        return None
    return {"curve": [points[k] for k in sorted(points)], "wall_s": end.get("wall_s"), "updates": end.get("updates"),
            "env_steps_per_s": end.get("env_steps_per_s")}


def run_cell(exp: dict, seed: int, steps: int, workdir: Path, cells_dir: Path) -> dict:
    """Train (or resume, or skip) one cell; returns its saved record."""
    from marlctl.trainer.config import load_config
    from marlctl.trainer.run import resume_run, train_run
    from rich.console import Console

    name = cell_name(exp, seed)
    record_path = cells_dir / f"{name}.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record["steps"] == steps and record["overrides"] == [*common(exp["part"], steps), *exp["overrides"]]:
            return {**record, "skipped": True}
    run_dir = workdir / name
    overrides = [*common(exp["part"], steps), *exp["overrides"]]
    commit = source_commit()
    t0 = time.perf_counter()
    finished = read_run(run_dir)
    if finished is None and (run_dir / "checkpoints" / "latest.pt").is_file():
        resume_run(run_dir, console=Console(quiet=True))
    elif finished is None:
        shutil.rmtree(run_dir, ignore_errors=True)  # started but never checkpointed: start over
        cfg = load_config(exp["algo"], exp["env_id"], overrides=overrides, steps=steps, seed=seed, device="cpu")
        train_run(cfg, run_dir, Console(quiet=True))
    result = read_run(run_dir)
    assert result is not None, f"{run_dir} did not finish"
    record = {**{k: exp[k] for k in ("part", "setting", "punishment", "env_id", "algo")}, "seed": seed,
              "steps": steps, "overrides": overrides, "commit": commit, **result,
              "wall_this_invocation_s": time.perf_counter() - t0}
    atomic_write_text(record_path, json.dumps(record, indent=1))
    return record


def load_cells(cells_dir: Path, exps: list[dict], steps: int) -> list[dict]:
    """Finished cell records of these experiments at this budget, in experiment order."""
    order = [(e["env_id"], e["algo"]) for e in exps]
    found = []
    for path in sorted(cells_dir.glob("*.json")) if cells_dir.is_dir() else []:
        r = json.loads(path.read_text())
        if (r["env_id"], r["algo"]) in order and r["steps"] == steps:
            found.append(r)
    return sorted(found, key=lambda r: (order.index((r["env_id"], r["algo"])), r["seed"]))


def random_play(env_id: str, episodes: int = 256, seed: int = 0) -> dict[str, float]:
    """Uniform random available actions on ``env_id``: mean return and joint catches (score) per episode."""
    from marlctl.envs import make_batched_env
    from marlctl.envs.vector import random_actions

    env = make_batched_env(env_id, episodes)
    step, rng = env.reset(seed), np.random.default_rng(seed)
    total = np.zeros(episodes)
    while True:
        step = env.step(random_actions(step.avail, rng))
        total += step.reward
        if (step.terminated | step.truncated).all():
            return {"return": float(total.mean()), "joint": float(np.mean(step.score))}


def _lone(ret: float, score: float, p: float, reward: float) -> float:
    """Lone catches per episode from return = reward * joint - P * lone (QTRAN game)."""
    return (reward * score - ret) / p if p > 0 else float("nan")


def summarize(results: list[dict]) -> dict[str, dict[str, dict]]:
    """setting -> algo -> final greedy return (mean, std, per seed), mean of the last three evaluations, best,
    joint and lone catches per episode at the end."""
    table: dict[str, dict[str, dict]] = {}
    for r in results:
        ys = [c[1] for c in r["curve"]]
        score = r["curve"][-1][2] or 0.0
        reward = 1.0 if r["part"] == "qtran" else 10.0
        d = table.setdefault(r["setting"], {}).setdefault(
            r["algo"], {"punishment": r["punishment"], "final": [], "last3": [], "best": [], "joint": [], "lone": [],
                        "seeds": [], "commits": []})
        d["final"].append(ys[-1])
        d["last3"].append(float(np.mean(ys[-3:])))
        d["best"].append(max(ys))
        d["joint"].append(score)
        d["lone"].append(_lone(ys[-1], score, r["punishment"], reward) if r["part"] == "qtran" else float("nan"))
        d["seeds"].append(r["seed"])
        d["commits"].append(r["commit"])
    out: dict[str, dict[str, dict]] = {}
    for s, algos in table.items():
        out[s] = {}
        for a, d in algos.items():
            out[s][a] = {"n": len(d["final"]), "punishment": d["punishment"], "final_mean": float(np.mean(d["final"])),
                         "final_std": float(np.std(d["final"])), "final_per_seed": d["final"],
                         "last3_mean": float(np.mean(d["last3"])), "best_mean": float(np.mean(d["best"])),
                         "joint_mean": float(np.mean(d["joint"])), "lone_mean": float(np.mean(d["lone"])),
                         "seeds": d["seeds"], "commits": sorted(set(d["commits"]))}
    return out


def verdict(summary: dict) -> list[str]:
    """Does Fig. 4a-c's ordering hold: each QTRAN above VDN and QMIX, the gap growing with P (last-3 means)?"""
    lines, gaps = [], {}
    for setting, algos in summary.items():
        if not setting.startswith("N=2"):
            continue
        base = max((algos[a]["last3_mean"] for a in ("vdn", "qmix") if a in algos), default=None)
        for q in ("qtran-base", "qtran-alt"):
            if q in algos and base is not None:
                gap = algos[q]["last3_mean"] - base
                gaps.setdefault(q, []).append((algos[q]["punishment"], gap))
        ranked = sorted(algos, key=lambda a: -algos[a]["last3_mean"])
        lines.append(f"- {setting}: " + " > ".join(f"{a} ({algos[a]['last3_mean']:.1f})" for a in ranked))
    for q, gs in gaps.items():
        above = all(g > 0 for _, g in gs)
        growing = all(b > a for (_, a), (_, b) in zip(gs, gs[1:], strict=False)) if len(gs) > 1 else None
        lines.append(f"- {q} minus the better of VDN/QMIX: " + ", ".join(f"P={p} {g:+.1f}" for p, g in gs)
                     + f" -> above both at every P: {'yes' if above else 'no'}; gap growing with P: "
                     f"{'n/a' if growing is None else 'yes' if growing else 'no'}")
    return lines


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in results))
    fig, axes = plt.subplots(1, len(settings), figsize=(4.4 * len(settings), 3.6), squeeze=False)
    for col, setting in enumerate(settings):
        ax = axes[0][col]
        by_algo: dict[str, list[dict]] = {}
        for r in results:
            if r["setting"] == setting:
                by_algo.setdefault(r["algo"], []).append(r)
        for algo, rs in by_algo.items():
            n = min(len(r["curve"]) for r in rs)
            steps = np.array([c[0] for c in rs[0]["curve"][:n]])
            ys = np.array([[c[1] for c in r["curve"][:n]] for r in rs], dtype=float)  # [seeds, points]
            mean = ys.mean(0)
            ax.plot(steps, mean, label=f"{algo} ({len(rs)} seeds)")
            if len(rs) > 1:  # 95% CI of the mean (normal approximation, as Fig. 4)
                half = 1.96 * ys.std(0, ddof=1) / np.sqrt(len(rs))
                ax.fill_between(steps, mean - half, mean + half, alpha=0.2)
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.set_title(setting, fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylabel("greedy eval return / episode")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def markdown(meta: dict, summary: dict, results: list[dict]) -> str:
    lines = [
        "# Modified predator-prey: QTRAN Fig. 4a-c on QTRAN's own game" if meta["parts"] == ["qtran"] else
        "# Modified predator-prey: QTRAN Fig. 4a-c / ReMIX §5.1 at a small budget", "",
        f"Budget per run: {meta['steps']:,} env steps (QTRAN paper: 10^7), seeds {meta['seeds']}; "
        f"{len(results)} finished cells, {meta['cell_wall_s'] / 60:.1f} min of run wall time in all on "
        f"{meta['machine']}. Command: `{meta['command']}`.", "",
        "Game (QTRAN §4, App. C.1): `predator_prey_qtran` - a prey in a cardinal direction of a predator within "
        "its 5x5 view is caught" + (f" (here `reach={meta['reach']}`: at most {meta['reach']} cell(s) away)"
                                    if meta.get("reach") else "") + "; +1 when two or more catch it at once (it regenerates), -P for each prey only one "
        "catches; fixed 100 steps. Trainer: the family's packaged settings (feed-forward agents, three hidden "
        "layers of 64, Adam, epsilon 1 -> 0.1, `trainer/configs/env/predator_prey_qtran.toml`) plus: "
        + ", ".join(f"`{o}`" for o in meta["common"]["qtran"]) + ".", "",
        "Greedy evaluation (16 episodes per point). `last 3` = mean of the last three evaluation points "
        "(mean over seeds); `joint` / `lone` = catches per episode at the final evaluation (lone from "
        "return = joint - P * lone). `random play`: uniform random available actions, 256 episodes.", "",
        "| setting | algorithm | seeds | final return (mean ± std) | last 3 | best | joint | lone | commit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, algos in summary.items():
        rnd = meta.get("random_play", {}).get(setting)
        if rnd is not None:
            lone = _lone(rnd["return"], rnd["joint"], rnd["punishment"], 1.0)
            lines.append(f"| {setting} | random play | - | {rnd['return']:.1f} | - | - | {rnd['joint']:.2f} | "
                         f"{lone:.2f} | - |")
        for algo, d in algos.items():
            lines.append(f"| {setting} | {algo} | {d['n']} | {d['final_mean']:.1f} ± {d['final_std']:.1f} | "
                         f"{d['last3_mean']:.1f} | {d['best_mean']:.1f} | {d['joint_mean']:.2f} | {d['lone_mean']:.2f}"
                         f" | {', '.join(d['commits'])} |")
    lines += ["", f"![curves]({meta['png']})", "", "## Against the paper (Fig. 4a-c: QTRAN above VDN and QMIX, the "
              "gap growing with P)", "", *verdict(summary), "", *meta.get("notes", []), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60000)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--parts", nargs="+", default=["qtran"], choices=["qtran", "remix"])
    p.add_argument("--punishments", nargs="+", type=float, default=[0.5, 1.0, 1.5], help="P of the QTRAN part")
    p.add_argument("--algos", nargs="+", default=list(QTRAN_ALGOS), choices=list(QTRAN_ALGOS),
                   help="algorithms of the QTRAN part")
    p.add_argument("--tag", default="", help="suffix of the output names (paper_predator_prey<tag>.*)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--workdir", type=Path, default=None, help="run dirs (default: <out>/tmp/paper_predator_prey<tag>)")
    p.add_argument("--shard", default="0/1", help="I/N: run only cells I, I+N, I+2N, ... (one process per core)")
    p.add_argument("--rebuild", action="store_true", help="only rewrite the outputs from the finished cells")
    p.add_argument("--note", action="append", default=[], help="a line for the Markdown's notes (repeatable)")
    p.add_argument("--reach", type=int, default=0,
                   help="catching reach of the QTRAN game: 1 = adjacent prey only; 0 = its default, in line in view")
    args = p.parse_args()
    name = f"paper_predator_prey{args.tag}"
    cells_dir = args.out / name / "cells"
    workdir = args.workdir or args.out / "tmp" / name
    exps = [e for e in experiments(tuple(args.punishments), tuple(args.algos), args.reach) if e["part"] in args.parts]
    if not args.rebuild:
        index, count = (int(x) for x in args.shard.split("/"))
        cells = [(e, s) for s in args.seeds for e in exps]  # seed-major: a cut-short run still covers every setting
        for k, (exp, seed) in enumerate(cells):
            if k % count != index:
                continue
            r = run_cell(exp, seed, args.steps, workdir, cells_dir)
            print(f"{cell_name(exp, seed)}: {'skipped (finished) ' if r.get('skipped') else ''}final return "
                  f"{r['curve'][-1][1]:.2f}, joint catches {r['curve'][-1][2]} ({r['wall_s']:.0f} s, {r['commit']})",
                  flush=True)
    results = [r for r in load_cells(cells_dir, exps, args.steps) if r["seed"] in args.seeds]
    if not results:
        raise SystemExit(f"no finished cells of these experiments under {cells_dir}")
    summary = summarize(results)
    meta = {"steps": args.steps, "seeds": args.seeds, "parts": args.parts,
            "cell_wall_s": sum(r["wall_s"] or 0.0 for r in results),
            "common": {part: common(part, args.steps) for part in args.parts},
            "machine": f"{os.cpu_count()} CPU cores shared with other work, CPU torch",
            "command": f"python bench/paper_predator_prey.py --parts {' '.join(args.parts)} --steps {args.steps} "
                       f"--seeds {' '.join(map(str, args.seeds))} --punishments {' '.join(map(str, args.punishments))}"
                       f" --algos {' '.join(args.algos)}" + (f" --reach {args.reach}" if args.reach else "")
                       + (f" --tag {args.tag}" if args.tag else ""),
            "png": f"{name}.png", "notes": args.note, "reach": args.reach,
            "random_play": {setting: {**random_play(e["env_id"]), "punishment": e["punishment"]}
                            for setting, e in {e["setting"]: e for e in exps if e["part"] == "qtran"}.items()}}
    atomic_write_text(args.out / f"{name}.json", json.dumps({"meta": meta, "summary": summary, "runs": results},
                                                            indent=1))
    plot(results, args.out / f"{name}.png")
    atomic_write_text(args.out / f"{name}.md", markdown(meta, summary, results))
    print(f"wrote {args.out}/{name}.{{json,md,png}} ({len(results)} cells)")


if __name__ == "__main__":
    main()
