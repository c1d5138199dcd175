"""Win rate vs env steps of every algorithm on SMAX maps, several seeds, at a stated budget: JSON + Markdown + PNG.

Each (map, algorithm, seed) cell is one real ``marlctl train`` run dir under ``--runs`` (same config layers as
the CLI), evaluated greedily every ``--eval-interval`` env steps. Resumable: a cell whose run ended is read
back, one with a checkpoint is resumed, the rest start fresh - rerunning the same command finishes the grid.
The report gives, per algorithm and eval point, the median win rate over seeds with a 95% bootstrap interval
(resampling seeds; with 3 seeds it is coarse), the final median, and the wall time per run. ``--merge`` adds the
cells of an earlier report whose run dirs are gone (same budget and settings, checked); ``--report-only`` trains
nothing and reports what has finished. Rewriting a report keeps what follows its ``## Notes`` heading (the
analysis written by hand under the generated tables) unchanged at the end of the new one.

    python bench/smax_learning.py --envs "smax:3m,smac=1" --steps 200000 --seeds 0,1,2 \\
        --out bench/results/smax_learning_3m_200k
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from marlctl.agents.files import atomic_write_text

BOOTSTRAP = 10_000


def eval_points(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "eval":
            while out and out[-1]["env_steps"] >= rec["env_steps"]:  # a resume rewound to a checkpoint: keep the rerun
                out.pop()
            out.append({"env_steps": rec["env_steps"], "win_rate": rec.get("eval/win_rate"),
                        "return": rec.get("eval/return"), "joint_win_rate": rec.get("eval/joint_win_rate")})
    return out


def train_win_rate(run_dir: Path, since: int) -> float | None:
    """Mean training-episode win rate (the exploring policy's own episodes) over the log records after env step
    ``since``: the figure JaxMARL and MAPPO's code report, to compare with theirs like for like."""
    vals = []
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "train" and rec["env_steps"] > since and rec.get("train/win_rate") is not None:
            vals.append(float(rec["train/win_rate"]))
    return float(np.mean(vals)) if vals else None


def _ended(run_dir: Path, steps: int) -> dict[str, Any] | None:
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    for line in reversed(log.read_text().splitlines()):
        rec = json.loads(line)
        if rec.get("event") == "end":
            return rec if rec["env_steps"] >= steps else None
    return None


def run_cell(env_id: str, algo: str, seed: int, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume, or read back) one cell; its row carries the eval curve and the wall time of its run."""
    from marlctl.trainer.config import load_config
    from marlctl.trainer.run import resume_run, train_run
    from rich.console import Console

    console = Console(stderr=True)
    wall_file = run_dir / "bench_wall_s.json"
    if _ended(run_dir, args.steps) is None:
        t0, c0 = time.perf_counter(), time.process_time()
        earlier = json.loads(wall_file.read_text()) if wall_file.is_file() else {}
        before = earlier.get("wall_s", 0.0)
        # CPU seconds of this process (every thread): on a shared machine the wall time says more about the load
        # than about the run; a cell resumed from a file written before this was recorded has none.
        cpu_before = earlier.get("cpu_s", 0.0 if not earlier else None)
        commit = earlier.get("commit") or _commit()  # the checkout the cell started at (HEAD may move meanwhile)
        if (run_dir / "checkpoints" / "latest.pt").is_file():
            resume_run(run_dir, steps=args.steps, console=console)
        else:
            if run_dir.exists():  # started but never checkpointed: nothing to resume
                shutil.rmtree(run_dir)
            cfg = load_config(algo, env_id, overrides=[
                f"run.eval_interval={args.eval_interval}", f"run.eval_episodes={args.eval_episodes}",
                "run.progress=false", *args.overrides], steps=args.steps, seed=seed, device=args.device)
            train_run(cfg, run_dir, console=console)
        cpu = None if cpu_before is None else cpu_before + time.process_time() - c0
        atomic_write_text(wall_file, json.dumps({"wall_s": before + time.perf_counter() - t0, "cpu_s": cpu,
                                                 "commit": commit}))
    end = _ended(run_dir, args.steps) or {}
    wall = json.loads(wall_file.read_text())
    return {"env": env_id, "algo": algo, "seed": seed, "env_steps": end.get("env_steps"),
            "updates": end.get("updates"), "wall_s": wall["wall_s"], "cpu_s": wall.get("cpu_s"),
            "commit": wall.get("commit"),
            "curve": eval_points(run_dir), "run_dir": str(run_dir),
            "train_win_rate": train_win_rate(run_dir, args.steps - args.eval_interval)}


def median_ci(values: list[float], rng: np.random.Generator) -> tuple[float, float, float]:
    """Median over seeds and its 95% bootstrap interval (seeds resampled with replacement)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 1:
        return float(x[0]), float(x[0]), float(x[0])
    meds = np.median(rng.choice(x, size=(BOOTSTRAP, len(x)), replace=True), axis=1)
    return float(np.median(x)), float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    rng = np.random.default_rng(0)
    md = [f"# Win rate vs env steps on SMAX (budget {meta['steps']:,} env steps, seeds {meta['seeds']})", "",
          f"Command: `python bench/smax_learning.py {' '.join(meta['argv'])}` (report at commit {meta['commit']}, "
          f"{meta['cpus']} CPU cores, CPU torch, one thread)", "",
          f"Greedy evaluation every {meta['eval_interval']:,} env steps over {meta['eval_episodes']} episodes; "
          f"config = algorithm/env defaults plus `{' '.join(meta['overrides']) or '(none)'}`. Median win rate over "
          "seeds [95% bootstrap interval]; a cell missing from the grid did not finish. The joint win rate is "
          "TAD-PPO-T's (the sequential coordination policy, greedy, on the same episodes as TAD-PPO's decentralized "
          "agents). The training win rate is the mean over the training episodes (exploring policy; TAD-PPO's are "
          f"played by its coordination policy) of the last {meta['eval_interval']:,} env steps.", ""]
    trained_at = sorted({r.get("commit") or "unrecorded" for r in rows if "error" not in r})
    if trained_at:
        md[-1:-1] = [f"Cells trained at commit(s): {', '.join(trained_at)}.", ""]
    for env_id in meta["envs"]:
        env_rows = [r for r in rows if r["env"] == env_id and "error" not in r]
        md += [f"## {env_id}", "", "| algo | seeds | final win rate | final return | final joint win rate | "
               "training win rate, last interval | wall s per run (median) | CPU s per run (median) | "
               "win rate at eval points |",
               "|---|---:|---|---:|---|---|---:|---:|---|"]
        for algo in meta["algos"]:
            cells = [r for r in env_rows if r["algo"] == algo and r["curve"]]
            if not cells:
                continue
            n_points = min(len(r["curve"]) for r in cells)
            pts = []
            for k in range(n_points):
                med, lo, hi = median_ci([r["curve"][k]["win_rate"] or 0.0 for r in cells], rng)
                pts.append(f"{cells[0]['curve'][k]['env_steps'] // 1000}k: {med:.2f} [{lo:.2f}, {hi:.2f}]")
            fin, flo, fhi = median_ci([r["curve"][-1]["win_rate"] or 0.0 for r in cells], rng)
            ret = float(np.median([r["curve"][-1]["return"] or 0.0 for r in cells]))
            wall = float(np.median([r["wall_s"] for r in cells]))
            cpus = [r.get("cpu_s") for r in cells]
            cpu_txt = f"{float(np.median(cpus)):.0f}" if all(c is not None for c in cpus) else "-"
            joint = [r["curve"][-1].get("joint_win_rate") for r in cells]
            joint_txt = "-"
            if all(j is not None for j in joint):  # TAD-PPO: the coordination policy (TAD-PPO-T), same episodes
                jm, jlo, jhi = median_ci(joint, rng)
                joint_txt = f"{jm:.2f} [{jlo:.2f}, {jhi:.2f}]"
            train = [r.get("train_win_rate") for r in cells]
            train_txt = "-"
            if all(t is not None for t in train):
                tm, tlo, thi = median_ci(train, rng)
                train_txt = f"{tm:.2f} [{tlo:.2f}, {thi:.2f}]"
            md.append(f"| {algo} | {len(cells)} | {fin:.2f} [{flo:.2f}, {fhi:.2f}] | {ret:.2f} | {joint_txt} | "
                      f"{train_txt} | {wall:.0f} | {cpu_txt} | {'; '.join(pts)} |")
        for r in rows:
            if r["env"] == env_id and "error" in r:
                md.append(f"| {r['algo']} seed {r['seed']} | error: {r['error']} | | | | | | | |")
        md.append("")
    return md


def merged_rows(path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The finished rows of an earlier report of this bench, refused where its cells are not comparable."""
    try:
        data = json.loads(path.read_text())
        meta, rows = data["meta"], data["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--merge {path}: not a report of this bench ({type(exc).__name__}: {exc})") from None
    mine = {"steps": args.steps, "overrides": args.overrides, "eval_interval": args.eval_interval,
            "eval_episodes": args.eval_episodes}
    differ = [f"{k} {meta.get(k)!r} (here {v!r})" for k, v in mine.items() if meta.get(k) != v]
    if differ:
        raise ValueError(f"--merge {path}: its cells are not comparable with this grid: {'; '.join(differ)}")
    return [r for r in rows if "error" not in r and r.get("curve")]


def row_curve(row: dict[str, Any]) -> Any:
    """A report row's eval curve as a plot curve (its run dir may be gone)."""
    from marlctl.trainer.plot import Curve

    pts = row["curve"]

    def as_float(key: str) -> np.ndarray:
        return np.array([np.nan if p[key] is None else p[key] for p in pts], dtype=float)

    return Curve(Path(row["run_dir"]), row["algo"], row["env"], row["seed"],
                 np.array([p["env_steps"] for p in pts], dtype=np.int64),
                 {"eval/return": as_float("return"), "eval/win_rate": as_float("win_rate")})


def _slug(text: str) -> str:
    """A path part from an env id or an override (``smax:3m,smac=1`` -> ``smax_3m_smac1``)."""
    return text.replace(":", "_").replace(",", "_").replace("=", "")


def _commit() -> str:
    """The checkout's commit (packaged defaults change over time: "defaults" means those of this commit)."""
    import subprocess

    p = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                       cwd=Path(__file__).parent)
    return p.stdout.strip() if p.returncode == 0 else "unknown"


NOTES_HEADING = "## Notes"


def kept_notes(md_path: Path) -> list[str]:
    """The lines of an existing report from its first ``## Notes`` heading on (``[]`` if none), so that
    regenerating the tables, e.g. with ``--report-only`` once more seeds have finished, keeps the analysis."""
    if not md_path.is_file():
        return []
    lines = md_path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(NOTES_HEADING)), None)
    return [] if start is None else lines[start:]


def main(argv: list[str] | None = None) -> int:
    from marlctl.trainer.plot import plot_curves
    from marlctl.trainer.registry import ALGORITHMS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", default="smax:3m,smac=1", help="env ids, separated by ; (ids hold commas)")
    ap.add_argument("--algos", default="qmix,vdn,qtran-base,qtran-alt,ow-qmix,remix,mappo,tad-ppo")
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--eval-interval", type=int, default=20_000)
    ap.add_argument("--eval-episodes", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    ap.add_argument("--runs", default="bench/results/tmp/smax_learning", help="run dirs, one per cell (kept)")
    ap.add_argument("--out", default="bench/results/smax_learning", help="path prefix of .json/.md/.png")
    ap.add_argument("--merge", action="append", default=[], metavar="REPORT.json",
                    help="add the finished cells of an earlier report of this bench (same budget, overrides and "
                         "eval settings; its run dirs may be gone) to this one: a grid cell it holds is not "
                         "trained again unless its run dir has finished, which then wins")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: report the finished cells (and --merge), e.g. while the grid is running")
    args = ap.parse_args(argv)
    envs, algos = args.envs.split(";"), args.algos.split(",")
    unknown = [a for a in algos if a not in ALGORITHMS]
    if unknown:
        ap.error(f"unknown --algos {unknown}; valid: {', '.join(sorted(ALGORITHMS))}")
    try:
        merged = [merged_rows(Path(p), args) for p in args.merge]
    except ValueError as exc:
        ap.error(str(exc))
    import torch

    torch.set_num_threads(1)
    from_reports = {(r["env"], r["algo"], r["seed"]) for extra in merged for r in extra}
    tag = "_".join(_slug(a) for a in args.overrides) or "defaults"
    rows = []
    for env_id in envs:
        for algo in algos:
            for seed in args.seeds:
                run_dir = Path(args.runs) / _slug(env_id) / f"{args.steps}_{tag}" / algo / f"seed{seed}"
                if (args.report_only or (env_id, algo, seed) in from_reports) and _ended(run_dir, args.steps) is None:
                    continue  # nothing to train here (reported from its earlier report, or not at all)
                try:
                    row = run_cell(env_id, algo, seed, run_dir, args)
                except Exception as exc:  # noqa: BLE001 - one failing cell must not hide the others
                    row = {"env": env_id, "algo": algo, "seed": seed, "error": f"{type(exc).__name__}: {exc}"[:200]}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    have = {(r["env"], r["algo"], r["seed"]) for r in rows if "error" not in r}
    for extra in merged:
        for r in extra:
            if (r["env"], r["algo"], r["seed"]) not in have:
                have.add((r["env"], r["algo"], r["seed"]))
                rows.append(r)
                envs += [r["env"]] if r["env"] not in envs else []
                algos += [r["algo"]] if r["algo"] not in algos else []
    rows = [r for r in rows if "error" not in r or (r["env"], r["algo"], r["seed"]) not in have]  # superseded
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"envs": envs, "algos": algos, "steps": args.steps, "seeds": args.seeds,
            "eval_interval": args.eval_interval, "eval_episodes": args.eval_episodes, "overrides": args.overrides,
            "argv": sys.argv[1:] if argv is None else argv, "cpus": os.cpu_count(), "commit": _commit(),
            "merged": args.merge,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    md = report(rows, meta)
    notes = kept_notes(out.with_name(out.name + ".md"))
    if notes:
        md += ["", *notes] if md[-1] else notes
    atomic_write_text(out.with_name(out.name + ".json"), json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    atomic_write_text(out.with_name(out.name + ".md"), "\n".join(md) + "\n")
    ok = [r for r in rows if "error" not in r]
    if ok:
        plot_curves([row_curve(r) for r in ok], out.with_name(out.name + ".png"),
                    title=f"{', '.join(envs)}: {args.steps:,} env steps")
    print("\n".join(md))
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
